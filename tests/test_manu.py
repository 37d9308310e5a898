"""MANU: the neuron statistics and scores equal a hand computation, the pick equals Open-MMUnlearning's formula
written out, pruned neurons output exactly zero, the trainer prunes once at its first step, bad knobs are refused."""

import math

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_unlearn.data.collators import UnlearnDataCollator
from hf_unlearn.methods.manu import (
    MANUConfig,
    MANUTrainer,
    importance_scores,
    neuron_modules,
    prune,
    scoring_kinds,
    select_neurons,
    set_statistics,
    top_neurons,
)
from hf_unlearn.testing import tiny_llava

WEIGHTS = {"abs": 2.0, "freq": 0.0, "var": 2.0, "rms": 2.0}


@pytest.fixture
def llava(toy_data):
    model, processor = tiny_llava(seed=0, corpus=list(toy_data["all"]["answer"]))
    return model.eval(), processor


def _batch(processor, rows):
    return dict(UnlearnDataCollator(processor)(list(rows)))


def _inputs_of(model, module, batch):
    """The input rows the module sees on ``batch`` (captured), to redo its projection by hand."""
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return seen[0]


def _hand_metrics(a: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Per neuron, with loops: mean |a|, firing frequency, population std, RMS over the rows of ``a`` (N, I)."""
    n, width = a.shape
    out = {m: np.zeros(width) for m in ("abs", "freq", "var", "rms")}
    for j in range(width):
        col = [float(a[i, j]) for i in range(n)]
        mean = sum(col) / n
        out["abs"][j] = sum(abs(v) for v in col) / n
        out["freq"][j] = sum(1.0 for v in col if abs(v) > threshold) / n
        out["var"][j] = math.sqrt(sum((v - mean) ** 2 for v in col) / n)
        out["rms"][j] = math.sqrt(sum(v * v for v in col) / n)
    return out


@torch.no_grad()
def test_statistics_and_scores_equal_a_hand_computation(llava, toy_data):
    model, processor = llava
    forget, retain = toy_data["forget"], toy_data["retain"]
    modules = neuron_modules(model)
    lang_name, lang = next(iter(modules["language"].items()))
    vis_name, vis = next(iter(modules["vision"].items()))
    hand: dict[str, dict] = {}
    for set_name, rows in (("forget", forget), ("retain", retain)):
        batch = _batch(processor, rows)
        # Vision: every patch of every image; language: the non-padding positions.
        x = _inputs_of(model, vis, batch)
        a_vis = (x @ vis.weight.T + vis.bias).reshape(-1, vis.out_features).double().numpy()
        x = _inputs_of(model, lang, batch)
        a_lang = (x @ lang.weight.T)[batch["attention_mask"].bool()].double().numpy()
        hand[set_name] = {vis_name: _hand_metrics(a_vis, 0.1), lang_name: _hand_metrics(a_lang, 0.1)}
        for group, use_mask in ((modules["vision"], False), (modules["language"], True)):
            ours = set_statistics(model, [batch], group, 0.1, use_mask)
            for name in hand[set_name]:
                if name in group:
                    for metric in ("abs", "freq", "var", "rms"):
                        np.testing.assert_allclose(ours[metric][name].numpy(), hand[set_name][name][metric],
                                                   rtol=1e-5, atol=1e-6)
    # score_j = sum_m w_m (F_m / (R_m + eps) - 1), by hand, against importance_scores on the hand statistics.
    f = {m: {n: torch.tensor(hand["forget"][n][m]) for n in hand["forget"]} for m in WEIGHTS}
    r = {m: {n: torch.tensor(hand["retain"][n][m]) for n in hand["retain"]} for m in WEIGHTS}
    scores = importance_scores(f, r, WEIGHTS, 1e-5)
    j = 3
    expected = sum(w * (hand["forget"][lang_name][m][j] / (hand["retain"][lang_name][m][j] + 1e-5) - 1)
                   for m, w in WEIGHTS.items() if w)
    assert scores[lang_name][j].item() == pytest.approx(expected, rel=1e-12)


def test_the_pick_equals_open_mmunlearnings_formula_written_out(llava, toy_data):
    """Open-MMUnlearning's manu.py, spelled out: per-batch metrics over every position (std with unbiased=False),
    combined as w * (F / (R + eps) - 1), then the global top-k threshold (``score >= topk(scores, k)[-1]``). On the
    vision tower (no padding) with one batch per set, it must pick our neurons."""
    model, processor = llava
    modules = neuron_modules(model)["vision"]
    stats = {}
    for set_name, rows in (("forget", toy_data["forget"]), ("retain", toy_data["retain"].select(range(4)))):
        batch = _batch(processor, rows)
        outputs = {}
        hooks = [m.register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, o.detach().float()))
                 for n, m in modules.items()]
        with torch.no_grad():
            model(**batch)
        for h in hooks:
            h.remove()
        stats[set_name] = {n: {"I_abs": v.abs().mean(dim=(0, 1)), "I_freq": (v.abs() > 0.1).float().mean(dim=(0, 1)),
                               "I_var": v.std(dim=(0, 1), unbiased=False), "I_rms": v.square().mean(dim=(0, 1)).sqrt()}
                           for n, v in outputs.items()}
    source_weights = {"I_abs": 2.0, "I_freq": 0.0, "I_var": 2.0, "I_rms": 2.0}
    combined = {n: sum(w * (stats["forget"][n][k] / (stats["retain"][n][k] + 1e-5) - 1.0)
                       for k, w in source_weights.items() if w) for n in modules}
    flat = torch.cat([combined[n] for n in modules])
    k = max(1, int(0.10 * flat.numel()))
    threshold = torch.topk(flat, k).values[-1]
    source_masks = {n: combined[n] >= threshold for n in modules}

    config = MANUConfig(output_dir="unused", prune_percent=10.0, language_layers=[])
    collator = UnlearnDataCollator(processor)
    ours = select_neurons(model, toy_data["forget"], toy_data["retain"].select(range(4)),
                          lambda rows: [dict(collator(rows))], config)
    assert set(ours) == set(modules)
    for n in modules:
        assert torch.equal(ours[n], source_masks[n]), n
    assert sum(int(m.sum()) for m in ours.values()) == k == 12  # 10 % of 2 x 64 vision neurons


def test_top_neurons_takes_exactly_the_percent_with_ties_to_the_first():
    scores = {"a": torch.tensor([1.0, 5.0, 5.0]), "b": torch.tensor([5.0, 0.0])}
    masks = top_neurons(scores, 40.0)  # floor(0.4 * 5) = 2 of three tied 5.0s: the first two in order
    assert masks["a"].tolist() == [False, True, True] and masks["b"].tolist() == [False, False]
    assert sum(int(m.sum()) for m in top_neurons(scores, 1.0).values()) == 1  # at least one when > 0
    assert not any(m.any() for m in top_neurons(scores, 0.0).values())


def test_each_modality_compares_rows_of_the_same_kind_in_both_sets():
    both = {"image": [0], "text": [1]}
    assert scoring_kinds(both, both) == {"vision": "image", "language": "text"}  # the authors' unimodal data
    assert scoring_kinds({"image": [0], "text": []}, both)["language"] == "image"  # image-only forget set (demo)
    assert scoring_kinds({"image": [], "text": [0]}, {"image": [1], "text": []})["language"] == "all"


def test_prune_silences_exactly_the_picked_neurons_and_nothing_else(llava, toy_data):
    model, processor = llava
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = MANUConfig(output_dir="unused", prune_percent=5.0)
    collator = UnlearnDataCollator(processor)
    expected = select_neurons(model, toy_data["forget"], toy_data["retain"], lambda rows: [dict(collator(rows))],
                              config)
    prune(model, processor, toy_data["forget"], toy_data["retain"], prune_percent=5.0, batch_size=64)
    modules = {n: m for g in neuron_modules(model).values() for n, m in g.items()}
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: outputs.__setitem__(n, o.detach()))
             for n, m in modules.items()]
    with torch.no_grad():
        model(**_batch(processor, toy_data["all"]))  # every row, unseen combinations included
    for h in hooks:
        h.remove()
    for name, mask in expected.items():
        assert torch.all(outputs[name][..., mask] == 0), name  # a pruned neuron outputs exactly 0
        assert torch.all(outputs[name][..., ~mask].abs().sum(dim=tuple(range(outputs[name].dim() - 1))) > 0)
    # 5 % of each modality: floor(0.05 * 128) = 6 vision and floor(0.05 * 256) = 12 language neurons.
    vision = sum(int(m.sum()) for n, m in expected.items() if "vision" in n)
    language = sum(int(m.sum()) for n, m in expected.items() if "language" in n)
    assert (vision, language) == (6, 12)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved == {f"{n}.weight" for n in expected}  # (tiny CLIP's fc1 biases start at zero)
    for name, mask in expected.items():
        weight = dict(model.named_parameters())[f"{name}.weight"]
        assert torch.all(weight[mask] == 0) and torch.equal(weight[~mask], start[f"{name}.weight"][~mask])


def test_trainer_prunes_once_at_its_first_step_and_reports_it(llava, toy_data, tmp_path):
    model, processor = llava
    args = MANUConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, use_cpu=True,
                      report_to="none", disable_tqdm=True, logging_steps=1, prune_percent=10.0)
    trainer = MANUTrainer(model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                          processing_class=processor)
    assert trainer.pruned == {}  # nothing before training: the run's "before" numbers are the starting model's
    collator = UnlearnDataCollator(processor)
    expected = select_neurons(model, toy_data["forget"], toy_data["retain"], lambda rows: [dict(collator(rows))],
                              args)
    after_first = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            after_first[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    trainer.add_callback(Snapshot())
    trainer.train()
    assert trainer.state.global_step == 3
    assert set(trainer.pruned) == set(expected) and all(torch.equal(trainer.pruned[n], expected[n]) for n in expected)
    assert all(torch.equal(after_first[1][n], after_first[3][n]) for n in after_first[1])  # later steps: no-ops
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"manu_pruned_vision", "manu_pruned_language_fraction"} <= logged
    final = trainer.state.log_history[-1]
    assert final["forget_nll_after"] != final["forget_nll_before"]  # the before/after log sees the pruning


@pytest.mark.parametrize("knobs, message", [
    ({"prune_percent": 150.0}, "prune_percent"),
    ({"prune_percent": -1.0}, "prune_percent"),
    ({"weight_abs": 0.0, "weight_var": 0.0, "weight_rms": 0.0}, "weight_abs, weight_freq"),
    ({"retain_loss_type": "kl"}, "retain_loss_type"),
    ({"epsilon": 0.0}, "epsilon"),
])
def test_bad_knobs_are_refused_by_name(knobs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        MANUConfig(output_dir=str(tmp_path), **knobs)


def test_bad_layers_and_a_missing_retain_set_are_refused_at_construction(llava, toy_data, tmp_path):
    model, processor = llava
    with pytest.raises(ValueError, match=r"vision_layers=\[5\]: layer\(s\) \[5\] out of range for 2 layers"):
        MANUTrainer(model, args=MANUConfig(output_dir=str(tmp_path), vision_layers=[5]),
                    train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"], processing_class=processor)
    with pytest.raises(ValueError, match="pass retain_dataset="):
        MANUTrainer(model, args=MANUConfig(output_dir=str(tmp_path)), train_dataset=toy_data["forget"],
                    processing_class=processor)
    text_only = toy_data["retain"].filter(lambda r: r["image"] is None)
    with pytest.raises(ValueError, match="set vision_layers=\\[\\] to prune the language model only"):
        prune(model, processor, toy_data["forget"], text_only)
