"""TRL dataset formats (issue 14, item 6): prompt/completion (standard and conversational) and ``messages`` rows,
with images, collate exactly like question/answer rows and train every trainer identically."""

import copy

import pytest
import torch
from datasets import Dataset
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from hf_unlearn import (
    GAConfig,
    GATrainer,
    MMUnlearnerConfig,
    MMUnlearnerTrainer,
    NPOConfig,
    NPOTrainer,
    SaliencyMaskConfig,
    UnlearnDataCollator,
    VKDConfig,
    VKDTrainer,
    compute_saliency_mask,
)
from hf_unlearn.testing import tiny_llama, tiny_llava, tiny_qwen2_vl

from conftest import load_llava


def as_conversational_prompt_completion(row):
    return {"images": [row["image"]] if row["image"] is not None else [],
            "prompt": [{"role": "user", "content": row["question"]}],
            "completion": [{"role": "assistant", "content": row["answer"]}]}


def as_messages(row):
    return {"images": [row["image"]] if row["image"] is not None else [],
            "messages": [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]}


def as_standard_prompt_completion(row):
    """Raw text, laid out as the tiny LLaVA's chat template would render it (the image token written by hand)."""
    image = "<image>\n" if row["image"] is not None else ""
    return {"image": row["image"], "prompt": f"USER: {image}{row['question']} ASSISTANT:",
            "completion": f" {row['answer']}"}


FORMATS = {"prompt_completion": as_conversational_prompt_completion, "messages": as_messages,
           "standard": as_standard_prompt_completion}


def convert(dataset, fmt):
    return Dataset.from_list([FORMATS[fmt](row) for row in dataset])


def assert_same_batch(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_collates_exactly_like_question_answer_rows(fmt, toy_data):
    _, processor = tiny_llava()
    rows = [toy_data["all"][i] for i in (0, 7, 1)]  # image, text-only and image rows in one batch
    collate = UnlearnDataCollator(processor)
    assert_same_batch(collate([FORMATS[fmt](r) for r in rows]), collate(rows))


def test_text_model_formats_and_the_standard_format_image_token_check(toy_data):
    _, tok = tiny_llama()
    rows = [toy_data["all"][i] for i in (6, 7)]  # text questions
    collate = UnlearnDataCollator(tok)
    for fmt in ("prompt_completion", "messages"):
        assert_same_batch(collate([FORMATS[fmt](r) for r in rows]), collate(rows))
    standard = collate([{"prompt": "The capital of France is", "completion": " Paris"}])
    labelled = standard["labels"][0][standard["labels"][0] != -100].tolist()
    assert labelled == tok(" Paris</s>", add_special_tokens=False)["input_ids"]  # raw text, end token added once
    _, processor = tiny_llava()
    with pytest.raises(ValueError, match=r"a string `prompt` with 1 image\(s\) must contain the processor's image "
                                         r"token '<image>' once per image \(found 0\)"):
        UnlearnDataCollator(processor)([{"image": toy_data["all"][0]["image"], "prompt": "Who?", "completion": "A"}])


@pytest.mark.parametrize("build", [tiny_llava, tiny_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_answer_labels_equal_trl_vision_language_collator(build, toy_data):
    """TRL's collator with completion_only_loss=True labels the same answer tokens, up to two deliberate differences:
    on LLaVA ours keeps the tokenizer's BOS (TRL tokenizes with add_special_tokens=False); on Qwen2-VL, whose ChatML
    template writes a newline after ``<|im_end|>``, our labels (and sequence) end at the end-of-turn token, TRL's
    carry that newline (issue 16: the model should not be trained to forget or keep a newline). Ours stays: it also
    serves text-only tokenizers, answer_only=False (image tokens excluded from the labels) and never truncates a
    prompt's image tokens."""
    _, processor = build()
    rows = [as_conversational_prompt_completion(toy_data["all"][i]) for i in (0, 1)]
    ours = UnlearnDataCollator(processor)(copy.deepcopy(rows))
    theirs = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)(copy.deepcopy(rows))
    end_of_turn = processor.tokenizer.convert_tokens_to_ids("<|im_end|>") if build is tiny_qwen2_vl else None
    for i in range(len(rows)):
        answer = ours["labels"][i][ours["labels"][i] != -100]
        their_answer = theirs["labels"][i][theirs["labels"][i] != -100]
        if end_of_turn is not None:  # TRL's labels: ours + the template's newline after <|im_end|>
            assert answer[-1] == end_of_turn and processor.tokenizer.decode(their_answer[-1:]) == "\n"
            their_answer = their_answer[:-1]
        assert answer.numel() > 0 and torch.equal(answer, their_answer)
    if build is tiny_qwen2_vl:
        for i in range(len(rows)):  # same sequences but for that one trailing token
            ids = ours["input_ids"][i][ours["attention_mask"][i].bool()]
            their_ids = theirs["input_ids"][i][theirs["attention_mask"][i].bool()]
            assert torch.equal(ids, their_ids[:-1]), i
        assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
    else:
        bos = processor.tokenizer.bos_token_id
        assert (ours["input_ids"][:, 0] == bos).all() and not (theirs["input_ids"][:, 0] == bos).any()
        for key in ("input_ids", "labels", "attention_mask"):
            assert torch.equal(ours[key][:, 1:], theirs[key]), key
        assert torch.equal(ours["pixel_values"], theirs["pixel_values"])


def _trainer(method, model, processor, forget, retain, out, mask):
    common = dict(output_dir=str(out), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-3, use_cpu=True,
                  disable_tqdm=True, logging_steps=1, seed=0, save_strategy="no", report_to="none")
    data = dict(train_dataset=forget, retain_dataset=retain, processing_class=processor)
    if method in ("ga", "ga_diff", "kl_min"):
        retain_type = {"ga": "none", "ga_diff": "nll", "kl_min": "kl"}[method]
        return GATrainer(model=model, args=GAConfig(**common, retain_loss_type=retain_type),
                         **{**data, "retain_dataset": retain if method != "ga" else None})
    if method == "npo":
        return NPOTrainer(model=model, args=NPOConfig(**common), **data)
    if method == "mmunlearner":
        return MMUnlearnerTrainer(model=model, args=MMUnlearnerConfig(**common, schedule="joint"),
                                  saliency_mask=mask, **data)
    return VKDTrainer(model, VKDConfig(**common), **data)


# Every trainer sees two formats: a conversational forget set (prompt/completion with images), and a retain set in
# the messages format or in raw standard prompt/completion text.
CASES = [("ga", "prompt_completion", None), ("ga_diff", "prompt_completion", "messages"),
         ("kl_min", "standard", "messages"), ("npo", "prompt_completion", "standard"),
         ("mmunlearner", "messages", "prompt_completion"), ("vkd", "prompt_completion", "standard")]


@pytest.mark.parametrize("method, forget_fmt, retain_fmt", CASES, ids=[c[0] for c in CASES])
def test_each_trainer_trains_identically_on_trl_formats(method, forget_fmt, retain_fmt, memorised_llava, toy_data,
                                                        tmp_path):
    mask_model, _ = load_llava(memorised_llava)
    mask = compute_saliency_mask(mask_model, SaliencyMaskConfig(score="random"), None, None, None,
                                 show_progress=False)
    logs, weights = {}, {}
    for name, forget, retain in [
            ("question_answer", toy_data["forget"], toy_data["retain"]),
            ("trl", convert(toy_data["forget"], forget_fmt),
             convert(toy_data["retain"], retain_fmt) if retain_fmt else toy_data["retain"])]:
        model, processor = load_llava(memorised_llava)
        trainer = _trainer(method, model, processor, forget, retain, tmp_path / name, mask)
        trainer.train()
        logs[name] = [{k: v for k, v in h.items() if k != "train_runtime" and "per_second" not in k}
                      for h in trainer.state.log_history]
        weights[name] = model.state_dict()
    assert len(logs["trl"]) == 3 and logs["trl"] == logs["question_answer"]  # 2 steps + summary, value for value
    assert logs["trl"][0]["loss"] != 0.0
    changed = [k for k, v in weights["question_answer"].items() if not torch.equal(v, mask_model.state_dict()[k])]
    assert changed and all(torch.equal(weights["trl"][k], weights["question_answer"][k]) for k in weights["trl"])
