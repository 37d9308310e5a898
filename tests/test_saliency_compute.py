"""compute_saliency_mask / accumulate_fisher: numbers checked against manual loops and hand-computed cases."""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from torch import nn
from transformers.modeling_outputs import CausalLMOutput

from hf_unlearn import UnlearnDataCollator
from hf_unlearn.saliency import SaliencyMaskConfig, accumulate_fisher, compute_saliency_mask, top_fraction
from hf_unlearn.testing import tiny_llava, tiny_qwen2_vl


def _image(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def vqa_rows(start: int, n: int) -> list[dict]:
    return [{"image": _image(i), "question": "Who is the person in the image?", "answer": f"Person {i}"}
            for i in range(start, start + n)]


def text_rows(start: int, n: int) -> list[dict]:
    return [{"image": None, "question": f"What is the job of person {i}?", "answer": ["baker", "pilot"][i % 2]}
            for i in range(start, start + n)]


FORGET, RETAIN, TEXT = vqa_rows(0, 5), vqa_rows(10, 4), text_rows(0, 4)


@pytest.fixture(scope="module")
def llava():
    model, processor = tiny_llava()
    return model, UnlearnDataCollator(processor)


def manual_grads(model, collator, rows, batch_size, names):
    """Per-batch fp32 gradients from a plain loop: eval mode, zero_grad, loss.backward."""
    params = dict(model.named_parameters())
    out = []
    for start in range(0, len(rows), batch_size):
        model.zero_grad(set_to_none=True)
        model(**collator(rows[start:start + batch_size])).loss.backward()
        out.append({n: torch.zeros(params[n].shape) if params[n].grad is None else params[n].grad.float().clone()
                    for n in names})
    model.zero_grad(set_to_none=True)
    return out


def manual_fisher(model, collator, rows, batch_size, names):
    grads = manual_grads(model, collator, rows, batch_size, names)
    return {n: sum(g[n] ** 2 for g in grads) / len(grads) for n in names}


# ------------------------------------------------------------------------------------------------------ the Fisher
def test_fisher_matches_manual_loop(llava):
    model, collator = llava
    names = list(SaliencyMaskConfig().resolve_targets(model))
    fisher = accumulate_fisher(model, FORGET, collator, names, batch_size=2)  # 3 batches, the last of 1 row
    expected = manual_fisher(model, collator, FORGET, 2, names)
    assert list(fisher) == names
    for n in names:
        assert fisher[n].dtype == torch.float32
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-5, atol=1e-12)
    total = sum(float(f.sum()) for f in fisher.values())
    assert total > 0
    # CLIP's post_layernorm is unused with vision_feature_layer=-1: no gradient, Fisher exactly 0
    assert float(fisher["model.vision_tower.post_layernorm.weight"].abs().sum()) == 0.0
    assert all(p.grad is None for p in model.parameters())  # grads cleaned up


class LinearToy(nn.Module):
    """loss = mean_i(x_i . w): the gradient of a batch is the mean of its rows' x, so Fishers are known exactly."""

    def __init__(self, dim: int = 5):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))

    def forward(self, x, labels=None):
        return CausalLMOutput(loss=(x @ self.w).mean())


def toy_collator(rows):
    return {"x": torch.tensor([r["x"] for r in rows], dtype=torch.float32), "labels": torch.zeros(len(rows))}


# Batches of one row. F_f = [4, 0, 1, 1, 0]; retain F = [1, 1, 1, 0, 0] (2 batches); text F = [0, 0, 9, 2.25, 0].
TOY_FORGET = [{"x": [2.0, 0.0, 1.0, 1.0, 0.0]}, {"x": [-2.0, 0.0, 1.0, -1.0, 0.0]}]
TOY_PRESERVE = {"retain": [{"x": [1.0, 1.0, 1.0, 0.0, 0.0]}, {"x": [-1.0, 1.0, -1.0, 0.0, 0.0]}],
                "text": [{"x": [0.0, 0.0, 3.0, 1.5, 0.0]}]}


def toy_mask(**kwargs):
    config = SaliencyMaskConfig(target_modules=["w"], batch_size=1, **kwargs)
    return compute_saliency_mask(LinearToy(), config, TOY_FORGET, TOY_PRESERVE, toy_collator, show_progress=False)


def test_toy_fishers_are_exact():
    model = LinearToy()
    f = accumulate_fisher(model, TOY_FORGET, toy_collator, ["w"], batch_size=1)["w"]
    assert f.tolist() == [4.0, 0.0, 1.0, 1.0, 0.0]
    # a batch of both rows: mean x = [0, 0, 1, 0, 0], one batch
    assert accumulate_fisher(model, TOY_FORGET, toy_collator, ["w"], batch_size=2)["w"].tolist() == [0, 0, 1, 0, 0]


def test_fisher_ratio_rule_pooled():
    # pooled preserve Fisher = (retain sums + text sums) / 3 batches = [2/3, 2/3, 11/3, 0.75, 0]
    # ratios (F_f + eps) / (F_p + eps) = [6, 1.5e-15, 0.27, 1.33, 1 (0/0 -> eps/eps)]
    mask = toy_mask()
    assert mask["w"].tolist() == [True, False, False, True, True]
    assert toy_mask(threshold=0.25)["w"].tolist() == [True, False, True, True, True]
    assert toy_mask(threshold=1.4)["w"].tolist() == [True, False, False, False, False]
    assert mask.scores_summary["num_batches"] == {"forget": 2, "preserve": {"retain": 2, "text": 1}}


def test_fisher_ratio_rule_every_is_stricter():
    # against retain [1, 1, 1, 0, 0]: [T, F, T, T, T]; against text [0, 0, 9, 2.25, 0]: [T, T, F, F, T]
    mask = toy_mask(preserve_combine="every")
    assert mask["w"].tolist() == [True, False, False, False, True]
    assert mask.num_selected <= toy_mask().num_selected


def test_preserve_sets_choose_the_data():
    only_retain = toy_mask(preserve_sets={"language": ["retain"]})  # ratios [4, 0, 1, inf, 1]
    assert only_retain["w"].tolist() == [True, False, True, True, True]
    assert only_retain.scores_summary["num_batches"]["preserve"] == {"retain": 2}


def test_missing_preserve_set_names_it_and_the_given_ones():
    config = SaliencyMaskConfig(target_modules=["w"])
    with pytest.raises(ValueError) as info:
        compute_saliency_mask(LinearToy(), config, TOY_FORGET, {"retain": TOY_PRESERVE["retain"]}, toy_collator)
    message = str(info.value)
    assert "['text']" in message and "given: ['retain']" in message


def test_bad_batches_and_datasets_are_explained():
    model = LinearToy()
    with pytest.raises(ValueError, match="labels"):
        accumulate_fisher(model, TOY_FORGET, lambda rows: {"x": toy_collator(rows)["x"]}, ["w"], 1)
    with pytest.raises(ValueError, match="empty"):
        accumulate_fisher(model, [], toy_collator, ["w"], 1)
    with pytest.raises(ValueError, match="data_collator"):
        accumulate_fisher(model, TOY_FORGET, None, ["w"], 1)
    with pytest.raises(ValueError, match="Non-finite loss"):
        accumulate_fisher(model, [{"x": [math.inf] * 5}], toy_collator, ["w"], 1)
    with pytest.raises(ValueError, match="not in the model"):
        accumulate_fisher(model, TOY_FORGET, toy_collator, ["v"], 1)


def test_max_batches_caps_each_dataset():
    mask = toy_mask(max_batches=1)
    assert mask.scores_summary["num_batches"] == {"forget": 1, "preserve": {"retain": 1, "text": 1}}
    # forget F = [4, 0, 1, 1, 0] (first row only); pooled preserve = ([1,1,1,0,0] + [0,0,9,2.25,0]) / 2
    assert mask["w"].tolist() == [True, False, False, False, True]


# ----------------------------------------------------------------------------------------- real VLMs, presets
def test_ratio_mask_on_llava_matches_manual_fishers(llava):
    model, collator = llava
    config = SaliencyMaskConfig(batch_size=2)  # vision preset, preserve = retain only
    mask = compute_saliency_mask(model, config, FORGET[:4], {"retain": RETAIN, "text": TEXT}, collator,
                                 show_progress=False)
    names = list(config.resolve_targets(model))
    assert mask.names() == names
    assert all(n.startswith(("model.vision_tower.", "model.multi_modal_projector.")) for n in mask)
    f_forget = manual_fisher(model, collator, FORGET[:4], 2, names)
    f_retain = manual_fisher(model, collator, RETAIN, 2, names)
    disagreements = 0
    for n in names:
        ratio = (f_forget[n] + 1e-15) / (f_retain[n] + 1e-15)
        clear = (ratio - 1).abs() > 1e-4  # ignore entries within float noise of the threshold
        assert torch.equal(mask[n][clear], (ratio >= 1)[clear]), n
        disagreements += int((mask[n] != (ratio >= 1)).sum())
    assert disagreements <= 5
    assert mask.num_covered == 30_208
    assert 0.2 < mask.sparsity < 0.8  # a data-dependent fraction, neither nothing nor everything
    groups = mask.scores_summary["groups"]
    assert groups["vision"]["covered"] == 23_936 and groups["projector"]["covered"] == 6_272
    assert groups["vision"]["selected"] + groups["projector"]["selected"] == mask.num_selected
    assert "text" not in mask.scores_summary["num_batches"]["preserve"]  # the vision groups only read "retain"
    summary = json.dumps(mask.scores_summary)
    assert "Person" not in summary and "baker" not in summary  # no data content


def test_vision_preset_on_qwen2_vl_leaves_everything_as_it_was():
    model, processor = tiny_qwen2_vl()
    model.train()
    model.lm_head.requires_grad_(False)
    marker = torch.full_like(model.model.visual.merger.ln_q.weight, 7.0)
    model.model.visual.merger.ln_q.weight.grad = marker
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = SaliencyMaskConfig(max_batches=1)
    mask = compute_saliency_mask(model, config, FORGET, {"retain": RETAIN}, UnlearnDataCollator(processor),
                                 show_progress=False)
    assert all(n.startswith("model.visual.") for n in mask) and mask.num_covered == 44_992
    assert mask.scores_summary["groups"]["projector"]["covered"] == 24_832
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert model.model.visual.merger.ln_q.weight.grad is marker
    assert all(p.grad is None for n, p in model.named_parameters() if n != "model.visual.merger.ln_q.weight")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_language_preset_uses_retain_and_text_and_accepts_datasets(llava):
    from datasets import Dataset

    model, collator = llava
    config = SaliencyMaskConfig(target_modules="language", max_batches=1)
    mask = compute_saliency_mask(model, config, FORGET, {"retain": RETAIN, "text": TEXT}, collator,
                                 show_progress=False)
    assert mask.num_covered == 159_680 - 30_208
    assert mask.scores_summary["num_batches"] == {"forget": 1, "preserve": {"retain": 1, "text": 1}}
    # the same rows as datasets.Dataset objects (images stored as PNG, decoded to PIL on iteration): same mask
    as_datasets = compute_saliency_mask(
        model, config, Dataset.from_list(FORGET),
        {"retain": Dataset.from_list(RETAIN), "text": Dataset.from_list(TEXT)}, collator, show_progress=False,
    )
    assert all(torch.equal(as_datasets[n], mask[n]) for n in mask)


# ------------------------------------------------------------------------------------------------ top fractions
def test_grad_magnitude_top_fraction_is_exact_and_ranked(llava):
    model, collator = llava
    config = SaliencyMaskConfig(score="grad_magnitude", threshold=0.3, batch_size=2)
    mask = compute_saliency_mask(model, config, FORGET[:4], None, collator, show_progress=False)
    assert mask.num_covered == 30_208 and mask.num_selected == 9_062  # round(0.3 * 30208) = round(9062.4)
    grads = manual_grads(model, collator, FORGET[:4], 2, mask.names())
    score = {n: sum(g[n] for g in grads).abs() for n in mask}
    selected = torch.cat([score[n][mask[n]] for n in mask])
    rest = torch.cat([score[n][~mask[n]] for n in mask])
    assert float(selected.min()) >= float(rest.max()) * (1 - 1e-5)
    assert mask.scores_summary["num_batches"] == {"forget": 2}


def test_random_top_fraction_is_exact_and_seeded(llava):
    model, _ = llava
    a = compute_saliency_mask(model, SaliencyMaskConfig(score="random", threshold=0.25), None, None, None)
    b = compute_saliency_mask(model, SaliencyMaskConfig(score="random", threshold=0.25), None, None, None)
    c = compute_saliency_mask(model, SaliencyMaskConfig(score="random", threshold=0.25, seed=1), None, None, None)
    assert a.num_selected == b.num_selected == c.num_selected == 7_552  # 0.25 * 30208
    assert all(torch.equal(a[n], b[n]) for n in a)
    overlap = (a & c).num_selected / a.num_covered
    assert 0.05 < overlap < 0.075  # independent draws: about 0.25 * 0.25
    full = compute_saliency_mask(model, SaliencyMaskConfig(score="random", threshold=1.0), None, None, None)
    assert full.num_selected == full.num_covered


def test_top_fraction_ties_broken_by_position():
    scores = {"a": torch.zeros(4), "b": torch.tensor([[0.0, 1.0], [0.0, 0.0]])}
    out = top_fraction(scores, 0.375)  # 3 of 8: the one 1.0, then the first two zeros
    assert out["a"].tolist() == [True, True, False, False]
    assert out["b"].tolist() == [[False, True], [False, False]]
    assert sum(int(m.sum()) for m in top_fraction(scores, 0.01).values()) == 0  # round(0.08) = 0


# -------------------------------------------------------------------------------------------------- dtypes, PEFT
def test_bf16_model_fisher_does_not_underflow():
    model, processor = tiny_llava()
    model.to(torch.bfloat16)
    collator = UnlearnDataCollator(processor)
    names = list(SaliencyMaskConfig().resolve_targets(model))
    fisher = accumulate_fisher(model, FORGET[:4], collator, names, batch_size=4)
    params = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    model(**collator(FORGET[:4])).loss.backward()
    small_total = 0
    for n in names:
        grad = params[n].grad
        if grad is None:
            continue
        assert grad.dtype == torch.bfloat16 and fisher[n].dtype == torch.float32
        torch.testing.assert_close(fisher[n], grad.float() ** 2, rtol=0, atol=0)
        small = (grad != 0) & (grad.float().abs() < 1.7e-4)  # g^2 < half of fp16's smallest subnormal (6e-8)
        small_total += int(small.sum())
        assert bool((fisher[n][small] > 0).all()), n  # fp32 squares keep them
        assert bool((grad[small].half() ** 2 == 0).all()), n  # squaring in fp16 (the reference code) gives 0
    assert small_total > 50
    model.zero_grad(set_to_none=True)


def test_lora_model_mask_covers_adapters_under_real_names():
    model, processor = tiny_llava()
    collator = UnlearnDataCollator(processor)
    peft_model = get_peft_model(
        model, LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    )
    config = SaliencyMaskConfig(target_modules="language", max_batches=1, batch_size=2)
    mask = compute_saliency_mask(peft_model, config, FORGET, {"retain": RETAIN, "text": TEXT}, collator,
                                 show_progress=False)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert mask.names() == trainable and len(trainable) == 8
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in mask)
    mask.validate(peft_model)
    fisher = accumulate_fisher(peft_model, FORGET, collator, trainable, batch_size=2, max_batches=1)
    expected = manual_fisher(peft_model, collator, FORGET[:2], 2, trainable)
    for n in trainable:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-5, atol=1e-12)
        assert float(fisher[n].sum()) > 0  # B is random, so A gets gradients too


# ------------------------------------------------------------------------------------------- gradient checkpointing
def _count_attention_calls(model):
    calls = []
    layer = model.model.language_model.layers[0]
    handle = layer.self_attn.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


def test_gradient_checkpointing_gives_the_same_fisher():
    model, processor = tiny_llava()
    collator = UnlearnDataCollator(processor)
    names = list(SaliencyMaskConfig(target_modules="both").resolve_targets(model))
    calls, handle = _count_attention_calls(model)
    plain = accumulate_fisher(model, FORGET[:4], collator, names, batch_size=2)
    assert len(calls) == 2  # one forward per batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # v5 renamed it activation_checkpointing_enable
        model.gradient_checkpointing_enable()
    calls.clear()
    checkpointed = accumulate_fisher(model, FORGET[:4], collator, names, batch_size=2)
    assert len(calls) == 4  # the attention ran again in backward: checkpointing was active despite eval mode
    handle.remove()
    for n in names:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-5, atol=1e-12)
    assert not model.training and not model.model.language_model.layers[0].training  # eval restored


def test_reentrant_checkpointing_with_lora_still_reaches_adapters():
    model, processor = tiny_llava()
    collator = UnlearnDataCollator(processor)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad and "language_model" in n]
    plain = accumulate_fisher(peft_model, TEXT, collator, names, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.disable_input_require_grads()  # as if the user (or an old PEFT) removed transformers' hook
    checkpointed = accumulate_fisher(peft_model, TEXT, collator, names, batch_size=2)
    for n in names:
        assert float(plain[n].sum()) > 0
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-5, atol=1e-12)
    assert not getattr(model, "_require_grads_hooks", None)  # our temporary hook was removed again


# ---------------------------------------------------------------------------------------------------- progress bar
def test_progress_bar_can_be_disabled(capsys):
    toy_mask()  # show_progress=False
    assert capsys.readouterr().err == ""
    config = SaliencyMaskConfig(target_modules=["w"], batch_size=1)
    compute_saliency_mask(LinearToy(), config, TOY_FORGET, TOY_PRESERVE, toy_collator, show_progress=True)
    err = capsys.readouterr().err
    assert "forget" in err and "preserve 'retain'" in err and "2/2" in err
