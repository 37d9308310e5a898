"""MIP-Editor: the path attributions equal finite differences of the answer log-likelihood (float64, by hand), the
first layer equals integrated gradients (zero baseline, left Riemann sum) written out with a leaf tensor (sign aside),
only the path rows train (bit-identical elsewhere), it forgets on the memorised tiny LLaVA, bad knobs are refused."""

import types

import pytest
import torch

from hf_unlearn.data.collators import UnlearnDataCollator
from hf_unlearn.features import language_blocks, vision_blocks
from hf_unlearn.methods.mip_editor import (
    MIPEditorConfig,
    MIPEditorTrainer,
    influential_path,
    layer_attribution,
    output_projection,
)
from hf_unlearn.testing import tiny_llava

from conftest import load_llava, mean_nll


def _rms_norm_in_float64(self, x):
    """LlamaRMSNorm without its float32 upcast: in a float64 model that upcast is a float32 rounding of every hidden
    state, noise of ~1e-9 in J that a finite difference at h = 1e-5 turns into ~1e-4 (larger than the attributions)."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


@pytest.fixture
def llava64(toy_data):
    """The tiny LLaVA wholly in float64 (RMSNorm included) and one batch: finite differences then agree with the
    gradients to ~1e-8 relative."""
    model, processor = tiny_llava(seed=0, corpus=list(toy_data["all"]["answer"]))
    model = model.double().eval()
    for module in model.modules():
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(_rms_norm_in_float64, module)
    batch = dict(UnlearnDataCollator(processor)(list(toy_data["forget"]) + [toy_data["retain"][0]]))
    batch["pixel_values"] = batch["pixel_values"].double()
    return model, processor, batch


def _objective(model, batch, projections, values) -> float:
    """J = mean log-probability of the answer tokens (in float64: transformers' loss upcasts logits to float32), with
    the input of ``projections[i]`` replaced by ``values[i]``."""
    handles = [p.register_forward_pre_hook(lambda m, a, v=v: (v,)) for p, v in zip(projections, values)]
    try:
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    finally:
        for h in handles:
            h.remove()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    labels = batch["labels"][:, 1:]
    scored = labels != -100
    return logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)[scored].mean().item()


def _clean(model, batch, projections):
    seen = {}
    handles = [p.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach()))
               for i, p in enumerate(projections)]
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    return [seen[i] for i in range(len(projections))]


def _finite_difference_attribution(model, batch, projections, layer, path, steps, neuron, fisher=False, h=1e-4):
    """(1/m) sum_k dJ/ds_neuron at s = k/m, each derivative a central difference; earlier layers' path neurons
    scaled to the same alpha, their other neurons and every earlier layer held at the clean values."""
    clean = _clean(model, batch, projections[: layer + 1])
    total = 0.0
    for k in range(steps):
        alpha = k / steps
        scales = []
        for i, a in enumerate(clean):
            s = torch.full((a.shape[-1],), alpha, dtype=a.dtype) if i == layer else torch.ones(a.shape[-1], dtype=a.dtype)
            if i != layer:
                s[path[i]] = alpha
            scales.append(s)
        plus, minus = [s.clone() for s in scales], [s.clone() for s in scales]
        plus[layer][neuron] += h
        minus[layer][neuron] -= h
        jp = _objective(model, batch, projections[: layer + 1], [a * s for a, s in zip(clean, plus)])
        jm = _objective(model, batch, projections[: layer + 1], [a * s for a, s in zip(clean, minus)])
        d = (jp - jm) / (2 * h)
        total += (d * d if fisher else d) / steps
    return total


@pytest.mark.parametrize("steps", [1, 3])
def test_language_attribution_equals_finite_differences_by_hand(llava64, steps):
    model, _, batch = llava64
    blocks = language_blocks(model)
    projections = [output_projection(b) for b in blocks]
    path = {0: torch.tensor([3, 17, 40])}  # an arbitrary path at layer 0: layer 1 is attributed along it
    for layer in (0, 1):
        ours = layer_attribution(model, [batch], projections, layer, path, steps)
        for neuron in (0, 25, 77):
            expected = _finite_difference_attribution(model, batch, projections, layer, path, steps, neuron)
            # float64 throughout; the central difference's h^2 truncation and rounding: ~1e-8 relative
            assert ours[neuron].item() == pytest.approx(expected, rel=1e-6, abs=1e-12), (layer, neuron)


def test_vision_fisher_equals_the_squared_finite_differences(llava64):
    model, _, batch = llava64
    projections = [output_projection(b) for b in vision_blocks(model)]
    path = {0: torch.tensor([1, 2])}
    ours = layer_attribution(model, [batch], projections, 1, path, 2, fisher=True)
    for neuron in (5, 33):
        expected = _finite_difference_attribution(model, batch, projections, 1, path, 2, neuron, fisher=True)
        assert ours[neuron].item() == pytest.approx(expected, rel=1e-6, abs=1e-16)


def test_first_layer_equals_the_integrated_gradient_formula_written_out(llava64):
    """Integrated gradients (Sundararajan et al. 2017; zero baseline, left Riemann sum over k = 0..m-1) of the NLL
    *loss* at the first layer (empty path): ja = sum_k g_k * (a / m), g_k the gradient w.r.t. the activations scaled
    to k/m, written out with a leaf tensor and summed over positions. Ours is exactly minus it (we attribute the
    answers' log-likelihood, so that the top neurons are the ones that *support* the forgotten answers). The official
    ``ig.py`` was not in the snapshot of PreckLi/MIP-Editor we could read: this is the textbook formula, not a port."""
    model, _, batch = llava64
    projection = output_projection(language_blocks(model)[0])
    (a,) = _clean(model, batch, [projection])
    m = 4
    ja = torch.zeros(a.shape[-1], dtype=a.dtype)
    for k in range(m):
        scaled = (a * (k / m)).requires_grad_(True)
        handle = projection.register_forward_pre_hook(lambda mod, args: (scaled,))
        loss = model(**batch).loss
        handle.remove()
        (g,) = torch.autograd.grad(loss, scaled)
        ja += (g * (a / m)).sum(dim=(0, 1))
    ours = layer_attribution(model, [batch], [projection], 0, {}, m)
    torch.testing.assert_close(ours, (-ja).float(), rtol=1e-5, atol=1e-9)
    assert set(torch.topk(ours, 5).indices.tolist()) == set(torch.topk(-ja, 5).indices.tolist())


def test_the_path_runs_through_every_layer_up_to_the_last_one_asked(llava64):
    model, _, batch = llava64
    blocks = language_blocks(model)
    path = influential_path(model, [batch], blocks, [1], neurons=4, steps=2)
    assert list(path) == [1] and len(path[1]) == 4
    # Layer 1's choice is made along the path chosen at layer 0 (scaled together), not on its own.
    projections = [output_projection(b) for b in blocks]
    at0 = torch.topk(layer_attribution(model, [batch], projections, 0, {}, 2), 4).indices.sort().values
    along = layer_attribution(model, [batch], projections, 1, {0: at0}, 2)
    assert path[1].tolist() == torch.sort(along, descending=True, stable=True).indices[:4].sort().values.tolist()


def test_only_the_path_rows_train(toy_data, tmp_path):
    model, processor = tiny_llava(seed=0, corpus=list(toy_data["all"]["answer"]))
    args = MIPEditorConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2,
                           use_cpu=True, report_to="none", disable_tqdm=True, path_neurons=3, ig_steps=2,
                           weight_decay=0.1)
    trainer = MIPEditorTrainer(model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                               processing_class=processor)
    assert args.steer_layer == 0 and args.trainable_layers == [0]  # the paper's depth on 2 layers; 0..steer
    assert {m: {k: len(v) for k, v in p.items()} for m, p in trainer.path.items()} == \
        {"language": {0: 3}, "vision": {0: 3, 1: 3}}
    assert sorted(trainer.path_mask) == sorted(
        [f"model.language_model.layers.0.mlp.{p}.weight" for p in ("gate_proj", "up_proj")]
        + [f"model.vision_tower.encoder.layers.{i}.mlp.fc1.{k}" for i in (0, 1) for k in ("weight", "bias")])
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    for name, p in model.named_parameters():
        if name in trainer.path_mask:
            held = ~trainer.path_mask[name]
            assert torch.equal(p[held], start[name][held]), name  # bit-identical, weight decay notwithstanding
            assert not torch.equal(p, start[name]), name  # the path rows moved
        else:
            assert torch.equal(p, start[name]), name


def test_it_forgets_the_memorised_forget_rows_and_keeps_the_retain_rows(memorised_llava, toy_data, tmp_path):
    """RMU on 16 path neurons per layer (of 128 language / 64 vision), steering the last language layer."""
    model, processor = load_llava(memorised_llava)
    forget_before, retain_before = mean_nll(model, processor, toy_data["forget"]), mean_nll(model, processor,
                                                                                           toy_data["retain"])
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = MIPEditorConfig(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=2, learning_rate=1e-2,
                           lr_scheduler_type="constant", steer_layer=-1, retain_weight=100.0, path_neurons=16,
                           use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", seed=0)
    trainer = MIPEditorTrainer(model, args=args, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                               processing_class=processor)
    assert {m: {k: len(v) for k, v in p.items()} for m, p in trainer.path.items()} == \
        {"language": {0: 16, 1: 16}, "vision": {0: 16, 1: 16}}
    trainer.train()
    assert forget_before < 0.1 and retain_before < 0.1  # memorised (measured 0.042 and 0.045)
    assert mean_nll(model, processor, toy_data["forget"]) > 0.5  # measured 1.31
    assert mean_nll(model, processor, toy_data["retain"]) < 0.1  # measured 0.049
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    assert moved and moved <= set(trainer.path_mask)
    rows = sum(int(trainer.path_mask[n][:, 0].sum()) if trainer.path_mask[n].dim() == 2
               else int(trainer.path_mask[n].sum()) for n in trainer.path_mask)
    changed = sum(int((p != start[n]).any(dim=-1).sum()) if p.dim() == 2 else int((p != start[n]).sum())
                  for n, p in model.named_parameters() if n in moved)
    assert 0 < changed <= rows  # only path rows, row by row


@pytest.mark.parametrize("knobs, message", [
    ({"path_neurons": 0}, "path_neurons"),
    ({"ig_steps": 0}, "ig_steps"),
    ({"path_num_batches": 0}, "path_num_batches"),
    ({"trainable_params": None}, "trainable_params=None would train whole layers"),
    ({"vision_trainable_params": "mlp.(fc1"}, "vision_trainable_params='mlp.\\(fc1' is not a valid regex"),
])
def test_bad_knobs_are_refused_by_name(knobs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        MIPEditorConfig(output_dir=str(tmp_path), **knobs)


def test_bad_layers_rows_and_a_user_mask_are_refused(toy_data, tmp_path):
    model, processor = tiny_llava(seed=0, corpus=list(toy_data["all"]["answer"]))

    def build(**knobs):
        return MIPEditorTrainer(model, args=MIPEditorConfig(output_dir=str(tmp_path), **knobs),
                                train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                                processing_class=processor, **knobs.pop("extra", {}))

    with pytest.raises(ValueError, match=r"vision_layers=\[4\]: layer\(s\) \[4\] out of range"):
        build(vision_layers=[4])
    with pytest.raises(ValueError, match="mlp.down_proj.weight of layer 0 has 64 output rows, not the 128 MLP"):
        build(trainable_params=r"^mlp\.down_proj\.")
    with pytest.raises(ValueError, match="takes no saliency_mask"):
        MIPEditorTrainer(model, args=MIPEditorConfig(output_dir=str(tmp_path)), train_dataset=toy_data["forget"],
                         processing_class=processor, saliency_mask={})
    text_forget = toy_data["retain"].filter(lambda r: r["image"] is None)
    with pytest.raises(ValueError, match="vision_layers=\\[0\\]: the vision path is attributed on forget rows with "
                                         "images and the forget set has none"):
        MIPEditorTrainer(model, args=MIPEditorConfig(output_dir=str(tmp_path), vision_layers=[0]),
                         train_dataset=text_forget, retain_dataset=toy_data["retain"], processing_class=processor)
    text_only = MIPEditorTrainer(model, args=MIPEditorConfig(output_dir=str(tmp_path)), train_dataset=text_forget,
                                 retain_dataset=toy_data["retain"], processing_class=processor)
    assert set(text_only.path) == {"language"}  # the default takes a text-only path for text-only rows

