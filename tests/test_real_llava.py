"""The slow tier: real pretrained weights (``hf_unlearn.real_llava``, 157 M parameters), real photos.

One session-scoped model memorises 4 fictitious characters on real photos (2 to forget, 2 to keep) plus 2 text
facts the pretrained model knows, with a plain ``Trainer`` on its last 2 decoder layers. Every registered method
then runs from a copy for a few steps with its registered hyperparameters, the real processor and chat template,
and must raise the forget NLL more than the retain NLL. Also: VKD leaves the language model bit-identical, masks are
exact (an elementwise mask under AdamW weight decay), the Evaluator runs, and the collator fixes of issue 16 hold
with SmolLM2's own tokenizer.

Budget: the whole tier about 150 s on a quiet 2-core machine (the model is built once and cached; a cold build adds
about a minute).
"""

import copy
import os
import warnings

import datasets
import pytest
import torch

from hf_unlearn import Evaluator, UnlearnDataCollator
from hf_unlearn.data.real_photos import RealPhotoBenchmarkConfig, build_real_photo_benchmark
from hf_unlearn.data.schema import rows_to_dataset
from hf_unlearn.demo.real import memorise, run_real_method
from hf_unlearn.models import LANGUAGE, PROJECTOR, VISION, parameter_group
from hf_unlearn.real_llava import SMOLLM2_CHAT_TEMPLATE, build_info, real_llava, real_llava_path
from hf_unlearn.trainers.registry import METHODS, MethodData

from conftest import MEMORISED

pytestmark = pytest.mark.slow

# Not skipped without the wheels: scripts/setup.sh installs them, and real_llava() then fails with the install command.

STEPS = 2  # per method: enough for the direction of every objective, cheap enough for CI
TEXT_FACTS = [("What is the capital of France?", "Paris"), ("What is the capital of Italy?", "Rome")]


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """The memorised real model, its processor and data (built once per session)."""
    # A 157 M model does use the second core, unless a second pytest-xdist worker has it: 2 threads per worker on 2
    # cores made every case here 5-6x slower (OpenMP threads waiting on each other), 1 thread each does not.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    model, processor = real_llava()
    bench = build_real_photo_benchmark(RealPhotoBenchmarkConfig(num_people=4, num_forget=2, num_holdout_people=0,
                                                                attributes=()))
    text = rows_to_dataset([dict(person_id=-1, kind="qa", image=None, question=q, answer=a,
                                 options=[a, "Berlin", "Madrid", "Lisbon"], label=0) for q, a in TEXT_FACTS])
    rows = datasets.concatenate_datasets([bench["forget_vqa"], bench["retain_vqa"], text])
    seconds = memorise(model, processor, rows, str(tmp_path_factory.mktemp("real_memorise")), steps=16,
                       learning_rate=1e-3, batch_size=len(rows), seed=0)
    retain = datasets.concatenate_datasets([bench["retain_vqa"], text])
    data = MethodData(forget=bench["forget_vqa"], retain=retain, preserve={"retain": bench["retain_vqa"], "text": text})
    before = {"forget": nll(model, processor, data.forget), "retain": nll(model, processor, data.retain)}
    yield dict(model=model, processor=processor, bench=bench, text=text, data=data, before=before, memorise_s=seconds)
    torch.set_num_threads(1)


@torch.no_grad()
def nll(model, processor, dataset) -> float:
    model.eval()
    return model(**UnlearnDataCollator(processor)(list(dataset))).loss.item()


def test_build_is_the_recipe_and_the_model_is_real(real):
    info = build_info(real_llava_path())
    assert info["num_parameters"] == sum(p.numel() for p in real["model"].parameters())
    assert 157_000_000 < info["num_parameters"] < 157_300_000
    assert info["vision_max_abs_diff_vs_onnxruntime"] < 1e-4  # the DINOv2 conversion matches onnxruntime
    assert info["num_image_tokens"] == 16
    processor = real["processor"]
    batch = UnlearnDataCollator(processor)([real["bench"]["forget_vqa"][0], real["text"][0]])
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((batch["input_ids"][0] == image_id).sum()) == 16 and not (batch["input_ids"][1] == image_id).any()
    assert batch["pixel_values"].shape == (1, 3, 56, 56)


def test_labels_end_at_im_end_with_smollm2s_tokenizer(real):
    processor, tok = real["processor"], real["processor"].tokenizer
    batch = UnlearnDataCollator(processor)([real["text"][0]])
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tok.decode(labelled) == "Paris<|im_end|>"  # issue 16 item 3: no newline after the end of turn
    assert labelled[-1] == tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id


def test_string_only_template_as_shipped_works_on_the_real_processor(real):
    processor = copy.deepcopy(real["processor"])
    processor.chat_template = SMOLLM2_CHAT_TEMPLATE  # the GGUF's template: string content only
    rows = [real["bench"]["forget_vqa"][0], real["text"][0]]
    with pytest.warns(UserWarning, match="string content only"):
        shipped = UnlearnDataCollator(processor)(rows)
    multimodal = UnlearnDataCollator(real["processor"])(rows)
    # Our multimodal version of SmolLM2's template renders exactly what the built-in layout gives.
    assert torch.equal(shipped["input_ids"], multimodal["input_ids"])
    assert torch.equal(shipped["labels"], multimodal["labels"])


def test_memorised_and_evaluator_runs(real):
    model, processor, bench = real["model"], real["processor"], real["bench"]
    assert nll(model, processor, bench["forget_vqa"]) < 0.1 and nll(model, processor, bench["retain_vqa"]) < 0.1
    evaluator = Evaluator(model, processor, {"forget_vqa": bench["forget_vqa"], "retain_vqa": bench["retain_vqa"],
                                             "retain_qa": real["text"]}, batch_size=4, max_new_tokens=6)
    assert evaluator.mcq_accuracy("forget_vqa") >= MEMORISED.min_accuracy
    assert evaluator.mcq_accuracy("retain_vqa") >= MEMORISED.min_accuracy
    answers = evaluator.generate(bench["forget_vqa"])
    assert answers == list(bench["forget_vqa"]["answer"])  # greedy answers are the memorised names
    assert evaluator.mcq_accuracy("retain_qa") >= MEMORISED.min_accuracy  # pretrained knowledge survived


# Methods whose registered hyperparameters (tuned on the tiny demo models) fail on the real model, measured here:
# strict, so the case turns red as soon as new defaults make it pass (then delete the entry).
DEFAULTS_FAIL_ON_REAL = {
    "mmunlearner": "issue 16 item 6: at the registry's demo picks (lr 1e-4 x masked_lr_scale 10, retain_weight 1, "
                   "joint schedule, vision mask) 2 steps raise the retain NLL more than the forget NLL "
                   "(forget +0.73, retain +1.18; at retain_weight 3: +0.64, +1.25; at lr 1e-3: +0.65, +1.19)",
    "manu": "MANU's demo picks prune 2% of the neurons of the last decoder layers' MLPs, chosen by forget/retain "
            "activation statistics: on this model that moves neither set (forget -0.00001, retain +0.00009 NLL)",
    "satimp": "SatImp weights each forget token by p^beta1 (1-p)^beta2, about 0 on memorised answers, so Adam's "
              "normalised step is noise: at the demo's lr 2e-3, forget +0.51, retain +1.09 (same on AVX-512 and the "
              "CI machine); lr 1e-3: +0.001, +0.059; lr 5e-4: 0, 0; beta1 1 instead of 5 changes none of these",
}


# Not run on the real model in the suite, for its cost alone (measured, not skipped silently: the reason is here).
NOT_IN_THE_REAL_TIER = {
    "smfa": "four forwards a step (refusal, forget NLL, retain through each adapter) with rank-16 LoRA on every "
            "projection: 352 s for its 2 steps here against IdkPO's 160 s (one pytest run on 2 cores that other test "
            "runs shared: a rough ratio). At the demo's lr 1e-3 it also failed the check (forget NLL +0.19, retain "
            "+0.38): Adam's first step moves every LoRA B entry by about the rate; the source trains at 1e-4",
    "mip_editor": "its influential path attributes every block up to the steered layer, 42 of this model's blocks at "
                  "the demo picks (299 s of the suite for one case). Measured outside the suite at 2 steps: forget "
                  "NLL above retain (it passed); with a cheaper path (2 layers, 1 batch, 2 IG steps): forget +0.18, "
                  "retain +0.48 at 2 steps, +0.31 / +0.10 at 10 steps",
}


@pytest.mark.parametrize("method", [
    pytest.param(m, marks=pytest.mark.xfail(strict=True, raises=AssertionError, reason=DEFAULTS_FAIL_ON_REAL[m]))
    if m in DEFAULTS_FAIL_ON_REAL else m for m in sorted(METHODS) if m not in NOT_IN_THE_REAL_TIER
])
def test_every_method_forgets_more_than_it_damages(real, method, tmp_path):
    model, processor, data = real["model"], real["processor"], real["data"]
    before = real["before"]
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        unlearned, trainer, _ = run_real_method(method, model, processor, data, str(tmp_path), seed=0,
                                                max_steps=STEPS, per_device_train_batch_size=2)
    after = {"forget": nll(unlearned, processor, data.forget), "retain": nll(unlearned, processor, data.retain)}
    assert after["forget"] - before["forget"] > after["retain"] - before["retain"], (before, after)
    assert after["forget"] > before["forget"]
    params = dict(unlearned.named_parameters())
    changed = {n for n, p in params.items() if not torch.equal(p.detach(), start[n])}
    assert changed, "nothing moved"
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert changed <= trainable  # frozen parameters are bit-identical
    if method == "vkd":  # VKD: the language model and lm_head are bit-identical
        assert all(parameter_group(n) in (VISION, PROJECTOR) for n in changed)
        assert all(torch.equal(params[n].detach(), start[n]) for n in params if parameter_group(n) == LANGUAGE)
    if method == "mmunlearner":  # a vision mask freezes the language model
        assert all(parameter_group(n) in (VISION, PROJECTOR) for n in changed)
        assert set(trainer.masker.masks) == trainable
    assert all(torch.equal(p.detach(), start[n]) for n, p in model.named_parameters())  # the shared model is intact


def test_masked_entries_stay_bit_identical_under_adamw_decay(real, tmp_path):
    """A SalUn-style elementwise mask over the last decoder layers: GA with weight decay moves only selected entries."""
    from hf_unlearn import GAConfig, GATrainer
    from hf_unlearn.demo.real import set_trainable

    model = copy.deepcopy(real["model"])
    names = set_trainable(model, "last_layers")
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    masks = {n: torch.rand(params[n].shape, generator=g) < 0.5 for n in names}
    start = {n: p.detach().clone() for n, p in params.items()}
    args = GAConfig(output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-3,
                    weight_decay=0.1, use_cpu=True, save_strategy="no", disable_tqdm=True, logging_strategy="no")
    GATrainer(model=model, args=args, train_dataset=real["data"].forget, processing_class=real["processor"],
              saliency_mask=masks).train()
    for name, mask in masks.items():
        p = params[name].detach()
        assert torch.equal(p[~mask], start[name][~mask]), name  # held fixed, bit for bit
    assert any(not torch.equal(params[n].detach()[m], start[n][m]) for n, m in masks.items())  # selected ones moved
    assert all(torch.equal(p.detach(), start[n]) for n, p in params.items() if n not in masks)
