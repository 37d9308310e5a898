"""What the exact mask costs: in-place gradient masking, saved values only where something can move masked entries.

The exactness tests (tests/test_masking.py, tests/test_distributed.py) show that masked entries never move; these show
that the cheap paths are taken when, and only when, they are exact.
"""

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from hf_unlearn import GAConfig, GATrainer
from hf_unlearn.masking import PackedMask, TrainingStart, put_back
from hf_unlearn.masking.local import LocalMasker
from hf_unlearn.testing import tiny_vlm
from hf_unlearn.testing.toy import JOBS, NAMES, toy_people

VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.")


def vision_mask(model, fraction=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < fraction
            for n, p in model.named_parameters() if n.startswith(VISION_PREFIXES)}


class _SavedValues(TrainerCallback):
    """Per optimizer step: which tensors the masker holds for the restore (their identities) and how many bytes."""

    def __init__(self, trainer):
        self.trainer, self.steps = trainer, []

    def on_step_end(self, args, state, control, **kwargs):
        saved = self.trainer.masker._saved
        self.steps.append(({n: id(t) for n, t in saved.items()}, self.trainer.masker.snapshot_bytes()))


def _train(tmp_path, weight_decay, **extra):
    model, processor = tiny_vlm("llava", corpus=NAMES + JOBS)
    data = toy_people()
    masks = vision_mask(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = GAConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=4, learning_rate=5e-3,
                    weight_decay=weight_decay, use_cpu=True, disable_tqdm=True, save_strategy="no", report_to="none",
                    seed=0, mask_scope="all", **extra)
    trainer = GATrainer(model=model, args=args, train_dataset=data["forget"], retain_dataset=data["retain"],
                        processing_class=processor, saliency_mask=masks)
    watcher = _SavedValues(trainer)
    trainer.add_callback(watcher)
    trainer.train()
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert torch.equal(params[name].detach()[~m], before[name][~m]), name
    assert any(not torch.equal(params[n].detach()[m], before[n][m]) for n, m in masks.items())
    return trainer, watcher


def test_without_weight_decay_a_fully_masked_run_saves_nothing_and_stays_exact(tmp_path):
    trainer, watcher = _train(tmp_path, weight_decay=0.0)
    assert trainer.masker.partially_masked and trainer.masker.protected == []
    assert [nbytes for _, nbytes in watcher.steps] == [0, 0, 0, 0]


def test_with_weight_decay_masked_values_are_saved_once_and_only_for_decayed_tensors(tmp_path):
    trainer, watcher = _train(tmp_path, weight_decay=0.1)
    masker = trainer.masker
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    assert set(masker.protected) == decayed & set(masker.partially_masked)  # biases and norms do not decay
    assert 0 < len(masker.protected) < len(masker.partially_masked)
    ids = [saved for saved, _ in watcher.steps]
    assert ids[0] and all(step == ids[0] for step in ids)  # the same tensors every step: stored once
    expected = 4 * sum(masker.params[n].numel() for n in masker.protected)
    assert {nbytes for _, nbytes in watcher.steps} == {expected}


def test_optimizer_policy():
    model, _ = tiny_vlm("llava")
    masker = LocalMasker(model, vision_mask(model))
    params = [masker.params[n] for n in masker.partially_masked]
    assert masker.protected == masker.partially_masked  # before training starts: always save (old behaviour)

    masker.begin_training(TrainingStart(torch.optim.AdamW(params, weight_decay=0.0)))
    assert masker.protected == []
    masker.unmasked_step()  # e.g. a retain step: momentum for masked entries from now on
    assert masker.protected == masker.partially_masked

    masker.begin_training(TrainingStart(torch.optim.AdamW(params, weight_decay=0.0), resumed=True))  # from a checkpoint
    assert masker.protected == masker.partially_masked
    masker.begin_training(TrainingStart(torch.optim.Adagrad(params)))  # may move zero-gradient entries
    assert masker.protected == masker.partially_masked
    used = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    used.step()
    masker.begin_training(TrainingStart(used))  # a user-supplied optimizer that already has momentum
    assert masker.protected == masker.partially_masked


def test_masks_accumulate_exactly_when_an_unmasked_pass_comes_between_masked_ones():
    """Two micro-steps of (masked forget pass, unmasked retain pass): the gradient must be
    m*f1 + r1 + m*f2 + r2. Masking p.grad in place on the second forget pass would also zero r1's masked entries."""
    model, processor = tiny_vlm("llava", corpus=NAMES + JOBS)
    from hf_unlearn.data.collators import UnlearnDataCollator

    collate = UnlearnDataCollator(processor)
    data = toy_people()
    rows = [r for r in data["retain"] if r["image"] is not None][:4]
    batches = [collate([data["forget"][i]]) for i in range(2)] + [collate([rows[i]]) for i in range(2)]
    masks = vision_mask(model)
    name = "model.multi_modal_projector.linear_1.weight"
    param = dict(model.named_parameters())[name]
    grads = []
    for batch in batches:  # each pass alone, unmasked
        model.zero_grad()
        model(**batch).loss.backward()
        grads.append(param.grad.clone())
    f1, f2, r1, r2 = grads
    m = masks[name]
    assert (r1[~m] != 0).any()  # the retain pass does reach masked entries

    masker = LocalMasker(model, masks)
    model.zero_grad()
    for forget, retain in ((batches[0], batches[2]), (batches[1], batches[3])):
        masker.active = True
        model(**forget).loss.backward()
        masker.active = False
        model(**retain).loss.backward()
    expected = ((f1 * m + r1) + f2 * m) + r2
    assert torch.equal(param.grad, expected)
    masker.remove()


def test_put_back_is_bit_exact_for_every_value():
    special = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf"), 1e-45, -3.5])
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        data = special.to(dtype).repeat(5)
        saved = special.flip(0).to(dtype).repeat(5)
        keep = torch.rand(data.shape, generator=torch.Generator().manual_seed(0)) < 0.5
        expected = torch.where(keep, data, saved)
        put_back(data, saved, keep)
        int_view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[data.element_size()]
        assert torch.equal(data.view(int_view), expected.view(int_view)), dtype


@pytest.mark.parametrize("numel", [1, 7, 8, 9, 1000])
def test_packed_mask_is_one_bit_per_entry_in_numpy_little_bit_order(numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) < 0.5
    packed = PackedMask(mask)
    assert packed.nbytes == (numel + 7) // 8
    assert np.array_equal(packed.packed.numpy(), np.packbits(mask.numpy(), bitorder="little"))
    assert torch.equal(packed.unpack(), mask)
