"""Exactness of masked updates: masked entries and frozen parameters stay bit-identical.

Settings from the saliency issue: AdamW with weight decay > 0, momentum built up on unmasked steps, gradient
accumulation, bf16 autocast, on LLaVA, Qwen2-VL and a LoRA-wrapped model.
"""

import pytest
import torch
from transformers import TrainerCallback

from hf_unlearn import GAConfig, GATrainer, MMUnlearnerConfig, MMUnlearnerTrainer
from hf_unlearn.testing import tiny_vlm
from hf_unlearn.testing.toy import JOBS, NAMES, toy_people

VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.", "model.visual.")


def random_vision_mask(model, fraction=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=g) < fraction
            for n, p in model.named_parameters() if n.startswith(VISION_PREFIXES)}


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def common_args(tmp_path, **kw):
    args = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=6, learning_rate=5e-3,
                weight_decay=0.1, use_cpu=True, logging_steps=1, disable_tqdm=True, save_strategy="no", seed=0)
    args.update(kw)
    return args


def assert_exact(before, model, masks):
    moved_allowed = 0
    for name, p in model.named_parameters():
        if name in masks:
            m = masks[name]
            assert torch.equal(p.detach()[~m], before[name][~m]), f"masked entries of {name} moved"
            moved_allowed += int((p.detach()[m] != before[name][m]).sum())
        else:
            assert torch.equal(p.detach(), before[name]), f"frozen parameter {name} moved"
    assert moved_allowed > 0  # the mask did let something move


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("setting", ["adamw_wd", "grad_accum_bf16"])
def test_masked_entries_and_frozen_params_bit_identical(arch, setting, tmp_path):
    model, processor = tiny_vlm(arch, corpus=NAMES + JOBS)
    data = toy_people()
    masks = random_vision_mask(model)
    before = snapshot(model)
    extra = {} if setting == "adamw_wd" else dict(gradient_accumulation_steps=2, bf16=True)
    trainer = GATrainer(model=model, args=GAConfig(**common_args(tmp_path, mask_scope="all", **extra)),
                        train_dataset=data["forget"], retain_dataset=data["retain"], processing_class=processor,
                        saliency_mask=masks)
    trainer.train()
    assert trainer.state.global_step == 6
    assert_exact(before, model, masks)


class _ForgetStepWatcher(TrainerCallback):
    """Record, per optimizer step, whether masked entries moved (they may on retain steps, never on forget steps)."""

    def __init__(self, trainer, masks):
        self.trainer, self.masks, self.moved = trainer, masks, []

    def on_step_begin(self, args, state, control, model=None, **kw):
        self.parts = self.trainer.loss_parts()
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.masks}

    def on_step_end(self, args, state, control, model=None, **kw):
        params = dict(model.named_parameters())
        moved = any(not torch.equal(params[n].detach()[~m], self.before[n][~m]) for n, m in self.masks.items())
        self.moved.append((self.parts, moved))


def test_momentum_from_unmasked_retain_steps_never_leaks_into_forget_steps(tmp_path):
    model, processor = tiny_vlm("llava", corpus=NAMES + JOBS)
    data = toy_people()
    masks = random_vision_mask(model)
    before = snapshot(model)
    args = MMUnlearnerConfig(**common_args(tmp_path, max_steps=8, schedule="alternate", forget_every=2))
    trainer = MMUnlearnerTrainer(model=model, args=args, train_dataset=data["forget"],
                                 retain_dataset=data["retain"], processing_class=processor, saliency_mask=masks)
    watcher = _ForgetStepWatcher(trainer, masks)
    trainer.add_callback(watcher)
    trainer.train()
    forget_steps = [moved for parts, moved in watcher.moved if parts == ("forget",)]
    retain_steps = [moved for parts, moved in watcher.moved if parts == ("retain",)]
    assert len(forget_steps) == 4 and len(retain_steps) == 4
    assert not any(forget_steps)      # masked entries never move on a forget step ...
    assert all(retain_steps[1:])      # ... although momentum and weight decay move them on retain steps
    language = [n for n in before if n.startswith("model.language_model.") or n.startswith("lm_head")]
    assert all(torch.equal(before[n], dict(model.named_parameters())[n]) for n in language)  # frozen
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [("forget_nll" in h, "retain_nll" in h) for h in logged[:2]] == [(True, False), (False, True)]


def test_joint_schedule_masks_forget_gradient_only(tmp_path):
    """Two backward passes per step: masked forget gradient, then unmasked retain gradient.

    The retain rows here are text-only, so they give the vision tower no gradient: any movement of a masked vision
    entry would have to come from the forget gradient.
    """
    from datasets import Dataset

    model, processor = tiny_vlm("llava", corpus=NAMES + JOBS)
    data = toy_people()
    text_only = Dataset.from_list([r for r in data["retain"] if r["image"] is None])
    masks = random_vision_mask(model)
    before = snapshot(model)
    args = MMUnlearnerConfig(**common_args(tmp_path, schedule="joint", weight_decay=0.0))
    trainer = MMUnlearnerTrainer(model=model, args=args, train_dataset=data["forget"], retain_dataset=text_only,
                                 processing_class=processor, saliency_mask=masks)
    assert trainer.loss_parts() == ("forget", "retain")
    trainer.train()
    assert all("retain_nll" in h and "forget_nll" in h for h in trainer.state.log_history if "loss" in h)
    assert_exact(before, model, masks)


def test_lora_wrapped_model_masks_lora_parameters(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, processor = tiny_vlm("llava", corpus=NAMES + JOBS)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                                             init_lora_weights=False))
    data = toy_people()
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters() if p.requires_grad}
    assert masks and all(".lora_" in n for n in masks)
    before = snapshot(model)
    GATrainer(model=model, args=GAConfig(**common_args(tmp_path, mask_scope="all")), train_dataset=data["forget"],
              retain_dataset=data["retain"], processing_class=processor, saliency_mask=masks).train()
    assert_exact(before, model, masks)


def test_mask_that_does_not_fit_the_model_names_every_problem(tmp_path):
    model, processor = tiny_vlm("llava")
    data = toy_people()
    masks = random_vision_mask(model)
    name = next(iter(masks))
    masks[name] = masks[name].flatten()[:3]
    masks["model.not_a_parameter"] = torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError) as err:
        GATrainer(model=model, args=GAConfig(**common_args(tmp_path)), train_dataset=data["forget"],
                  retain_dataset=data["retain"], processing_class=processor, saliency_mask=masks)
    assert name in str(err.value) and "model.not_a_parameter" in str(err.value) and "(3,)" in str(err.value)
