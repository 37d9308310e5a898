"""Every trainer x every documented row format (docs/data_formats.md), with and without images (issue 28, item 1).

The matrix: the 10 registered methods x 4 formats (question/answer, TRL ``messages``, TRL conversational
prompt/completion, TRL standard prompt/completion) x forget rows with and without images = 80 cases, each 2 optimizer
steps of the tiny LLaVA. A case either trains with a moving forget loss, or (a method that can only move vision-side
parameters, given rows without images) fails at construction with one clear error: never a silent no-op.

IdkPO's refusal path is checked on every format too: its chosen batch (the refusal) differs from its rejected batch
(the row's answer) and the logged DPO margin leaves 0. Before the fix, prompt/completion rows got the refusal
written into an ``answer`` column the collator never reads: chosen == rejected, margin 0, loss log 2 for ever.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import math

import pytest
import torch
from datasets import Dataset

from hf_unlearn import METHODS, UnlearnDataCollator
from hf_unlearn.methods.idkpo import CHOSEN_BATCH_KEY, REFUSAL_KEY, RefusalPairCollator, with_answer
from hf_unlearn.testing import tiny_llava
from hf_unlearn.testing.toy import JOBS, NAMES
from hf_unlearn.trainers.registry import MethodData

from conftest import ALTERNATE_ARGS, FLOAT32_UNIT_ROUNDOFF, with_alternatives


def question_answer(row):
    return dict(row)


def messages(row):
    return {"images": [row["image"]] if row["image"] is not None else [],
            "messages": [{"role": "user", "content": row["question"]},
                         {"role": "assistant", "content": row["answer"]}]}


def prompt_completion(row):
    return {"images": [row["image"]] if row["image"] is not None else [],
            "prompt": [{"role": "user", "content": row["question"]}],
            "completion": [{"role": "assistant", "content": row["answer"]}]}


def standard(row):
    """Raw text laid out as the tiny LLaVA's template renders it (the image token written by hand)."""
    image = "<image>\n" if row["image"] is not None else ""
    return {"image": row["image"], "prompt": f"USER: {image}{row['question']} ASSISTANT:",
            "completion": f" {row['answer']}"}


FORMATS = {"question_answer": question_answer, "messages": messages, "prompt_completion": prompt_completion,
           "standard": standard}
# Methods that train only vision-side parameters by default: VKD (frozen LLM) and MMUnlearner (its default mask
# covers the vision tower). Given forget rows without images, their forget loss has no gradient: refused.
VISION_ONLY = {"vkd", "mmunlearner"}

# The moving-loss threshold. Both logged forget losses are means over the same 2 forget rows (one batch per step), so
# without a weight update they could differ only by the summation order of the batch's answer tokens: at most
# 2 (n - 1) u |loss| for n terms (Higham eq. 4.4; conftest.reduction_tolerance), n <= 64 here, so 7.5e-6 |loss|. The
# smallest real movement in the matrix is GA_Diff on image rows, 3.1e-5 |loss| (its forget and retain gradients pull
# the shared vision tower apart at learning rate 1e-2); a dead objective moves by exactly 0.
NOISE = 2 * (64 - 1) * FLOAT32_UNIT_ROUNDOFF
MOVED = 1e-5  # the relative change required: above the noise bound, below the smallest real movement
assert NOISE < MOVED < 3.1e-5


@pytest.fixture(scope="module")
def llava():
    # Each Trainer.train() starts with accelerate's gc.collect(), which walks every object of the test session (0.5 s
    # a call here, more than the 2 steps); objects alive now are frozen out of its walk for this module.
    gc.collect()
    gc.freeze()
    yield tiny_llava(corpus=NAMES + JOBS)
    gc.unfreeze()


@pytest.fixture(scope="module")
def rows(toy_data):
    everything = list(toy_data["all"])
    return {True: [r for r in everything if r["image"] is not None],
            False: [r for r in everything if r["image"] is None]}


def _data(rows, fmt, images):
    """2 forget rows with (or without) images; retain rows of both kinds, in the same format."""
    convert = FORMATS[fmt]
    same, other = rows[images], rows[not images]
    retain = Dataset.from_list([convert(r) for r in same[2:4] + other[2:4]])
    return MethodData(forget=Dataset.from_list([convert(r) for r in same[:2]]), retain=retain,
                      preserve={"retain": retain, "text": retain})


CASES = [(m, f, i) for m in sorted(METHODS) for f in FORMATS for i in (True, False)]


@pytest.mark.parametrize("method, fmt, images", CASES,
                         ids=[f"{m}-{f}-{'image' if i else 'text'}" for m, f, i in CASES])
def test_every_trainer_trains_on_every_format(method, fmt, images, llava, rows, tmp_path):
    base, processor = llava
    spec = METHODS[method]
    args = spec.config(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2, learning_rate=1e-2,
                       use_cpu=True, disable_tqdm=True, logging_steps=1, save_strategy="no", report_to="none",
                       seed=0, probe_rows=0,  # the check reads the step logs, not the probe (tested elsewhere)
                       **ALTERNATE_ARGS.get(method, {}))
    data = _data(rows, fmt, images)
    if method == "altpo":  # the toy rows have no options to draw alternatives from
        data = dataclasses.replace(data, forget=with_alternatives(data.forget, JOBS + NAMES))
    mask = {"score": "random"} if method == "mmunlearner" else None  # its default mask's scope, scored cheaply
    if method in VISION_ONLY and not images:
        with pytest.raises(ValueError, match="no forget row has an image: text rows never pass through the vision "
                                             "tower, so the forget loss would have no gradient"):
            spec.build_trainer(copy.deepcopy(base), processor, data, args, mask=mask)
        assert not any(tmp_path.iterdir())  # refused before anything was written
        return
    trainer = spec.build_trainer(copy.deepcopy(base), processor, data, args, mask=mask)
    trainer.train()
    if method == "manu":  # training-free: it prunes at its first step; no step has a forget loss
        pruned = {modality for h in trainer.state.log_history for modality in ("vision", "language")
                  if h.get(f"manu_pruned_{modality}", 0) > 0}
        assert pruned == ({"vision", "language"} if images else {"language"}), trainer.state.log_history
        return
    steps = [h for h in trainer.state.log_history if "forget_loss" in h]
    assert len(steps) == 2
    first, last = steps[0]["forget_loss"], steps[-1]["forget_loss"]
    assert math.isfinite(first) and math.isfinite(last)
    assert abs(last - first) > MOVED * abs(first), (first, last)
    if method == "idkpo":  # the refusal is really the chosen answer: the DPO margin leaves 0 (policy == ref at step 1)
        assert steps[0]["reward_margin"] == 0.0 and abs(steps[-1]["reward_margin"]) > 1.0
        assert steps[-1]["forget_loss"] < math.log(2)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_idkpo_refusal_replaces_the_answer_in_every_format(fmt, llava, rows):
    _, processor = llava
    refusal = "I have no idea."
    raw = [FORMATS[fmt](r) for r in rows[True][:1] + rows[False][:1]]
    batch = RefusalPairCollator(UnlearnDataCollator(processor))([{**r, REFUSAL_KEY: refusal} for r in raw])
    tok = processor.tokenizer
    for i, row in enumerate(rows[True][:1] + rows[False][:1]):
        rejected = tok.decode(batch["labels"][i][batch["labels"][i] != -100])
        chosen_labels = batch[CHOSEN_BATCH_KEY]["labels"][i]
        chosen = tok.decode(chosen_labels[chosen_labels != -100])
        assert row["answer"] in rejected and refusal not in rejected
        assert refusal in chosen and row["answer"] not in chosen
    # The chosen rows are the same rows in the same format, only the answer differs
    replaced = [with_answer(r, refusal) for r in raw]
    assert [sorted(r) for r in replaced] == [sorted(r) for r in raw]


def test_idkpo_refuses_rows_without_an_answer_column():
    with pytest.raises(ValueError, match=r"IdkPO cannot put the refusal into this row: it has none of the answer "
                                         r"columns `answer`, `completion` or `messages` \(columns found: "
                                         r"\['text'\]\)"):
        with_answer({"text": "my own format"}, "I don't know.")


def test_standard_completion_keeps_its_leading_space():
    assert with_answer({"prompt": "Q:", "completion": " Alice"}, "No idea.")["completion"] == " No idea."
    assert with_answer({"prompt": "Q: ", "completion": "Alice"}, "No idea.")["completion"] == "No idea."


def test_a_text_model_is_not_refused_for_text_rows(rows, tmp_path):
    """The vision-only refusal concerns vision-language models: a text model's parameters are all language-side."""
    from hf_unlearn.testing import tiny_llama

    model, tok = tiny_llama(corpus=NAMES + JOBS)
    spec = METHODS["ga"]
    args = spec.config(output_dir=str(tmp_path), max_steps=1, use_cpu=True, report_to="none", save_strategy="no",
                       disable_tqdm=True)
    trainer = spec.build_trainer(model, tok, MethodData(forget=Dataset.from_list(rows[False][:2])), args)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_the_evaluator_reads_every_format(llava, rows):
    """`Evaluator` on TRL rows used to fail with a bare KeyError: 'question'; every format now scores the same."""
    from hf_unlearn import Evaluator

    model, processor = llava
    evaluator = Evaluator(model, processor, {}, batch_size=4, max_new_tokens=2)
    sets = {fmt: {"forget": Dataset.from_list([FORMATS[fmt](r) for r in rows[True][:2] + rows[False][:1]]),
                  "holdout": Dataset.from_list([FORMATS[fmt](r) for r in rows[True][4:6]])} for fmt in FORMATS}
    results = {fmt: evaluator.evaluate_rows(s) for fmt, s in sets.items()}
    reference = results["question_answer"]
    assert set(reference) == {"forget_nll", "forget_rougeL", "holdout_nll", "holdout_rougeL", "mia_auc"}
    for fmt, result in results.items():
        assert result == pytest.approx(reference, rel=1e-6), fmt
