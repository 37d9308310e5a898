"""MMUnlearner end to end on the memorised toy LLaVA: mask, schedule, retain-loss guard, config errors."""

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_unlearn import (
    MMUnlearnerConfig,
    MMUnlearnerTrainer,
    SaliencyMaskConfig,
    UnlearnDataCollator,
    compute_saliency_mask,
)

from conftest import load_llava, mean_nll


def args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=12, learning_rate=2e-3,
                use_cpu=True, logging_steps=1, disable_tqdm=True, save_strategy="no", seed=0)
    base.update(kw)
    return MMUnlearnerConfig(**base)


def split(toy_data):
    retain_vqa = Dataset.from_list([r for r in toy_data["retain"] if r["image"] is not None])
    text_qa = Dataset.from_list([r for r in toy_data["retain"] if r["image"] is None])
    return retain_vqa, text_qa


def test_vision_mask_forgets_images_and_keeps_text_bit_for_bit(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    retain_vqa, text_qa = split(toy_data)
    collator = UnlearnDataCollator(processor)
    mask = compute_saliency_mask(model, SaliencyMaskConfig(target_modules="vision", batch_size=2),
                                 toy_data["forget"], {"retain": retain_vqa, "text": text_qa}, collator,
                                 show_progress=False)
    assert 0.0 < mask.sparsity < 1.0
    before = {"forget": mean_nll(model, processor, toy_data["forget"]), "retain_vqa": mean_nll(model, processor, retain_vqa),
              "text": mean_nll(model, processor, text_qa)}
    # The reference loop (alternate schedule, no learning-rate scale, forget weight 1) stays available.
    reference = dict(schedule="alternate", masked_lr_scale=1.0, forget_weight=1.0)
    trainer = MMUnlearnerTrainer(model=model, args=args(tmp_path, learning_rate=1e-2, **reference),
                                 train_dataset=toy_data["forget"],
                                 retain_dataset=toy_data["retain"], processing_class=processor, saliency_mask=mask)
    trainer.train()
    after = {"forget": mean_nll(model, processor, toy_data["forget"]), "retain_vqa": mean_nll(model, processor, retain_vqa),
             "text": mean_nll(model, processor, text_qa)}
    assert after["forget"] > before["forget"] + 1.0       # the forget people are no longer recognised
    assert after["retain_vqa"] < 1.0                      # other people still are
    assert after["text"] == before["text"]                # text knowledge untouched: the LLM is frozen


def test_vision_mask_retain_steps_use_only_rows_that_reach_the_trainable_set(memorised_llava, toy_data, tmp_path):
    # Issue 16 item 5: with a vision mask the LLM is frozen, so a text-only retain batch gives no gradient at all.
    model, processor = load_llava(memorised_llava)
    retain_vqa, text_qa = split(toy_data)
    mask = compute_saliency_mask(model, SaliencyMaskConfig(target_modules="vision", batch_size=2),
                                 toy_data["forget"], {"retain": retain_vqa, "text": text_qa},
                                 UnlearnDataCollator(processor), show_progress=False)
    grad_norms = []

    class RecordGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if state.global_step % args.forget_every:  # a retain step
                grad_norms.append(sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None))

    trainer = MMUnlearnerTrainer(model=model, args=args(tmp_path, max_steps=16, schedule="alternate", forget_every=2,
                                                        learning_rate=1e-4),
                                 train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                                 processing_class=processor, saliency_mask=mask, callbacks=[RecordGradients()])
    trainer.train()
    assert len(grad_norms) == 8 and min(grad_norms) > 0  # every retain step moves the vision side
    assert trainer.skipped_retain_rows == len(text_qa) == 6
    assert all(trainer.pairing[i]["retain"]["image"] is not None for i in range(len(trainer.pairing)))
    assert trainer.state.log_history[0]["retain_rows_skipped"] == 6.0
    # Without a mask every parameter trains: text rows count, nothing is skipped.
    model, processor = load_llava(memorised_llava)
    with pytest.warns(UserWarning, match="not MMUnlearner"):
        plain = MMUnlearnerTrainer(model=model, args=args(tmp_path), train_dataset=toy_data["forget"],
                                   retain_dataset=toy_data["retain"], processing_class=processor)
    assert plain.skipped_retain_rows == 0 and len(plain.pairing.retain) == 10


def test_retain_guard_rollback_undoes_every_forget_update(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = args(tmp_path, max_steps=4, forget_every=1, retain_guard_max_loss=0.0, retain_guard_action="rollback")
    trainer = MMUnlearnerTrainer(model=model, args=cfg, train_dataset=toy_data["forget"],
                                 retain_dataset=toy_data["retain"], processing_class=processor)
    trainer.train()
    assert trainer.retain_guard.triggered == 4
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    assert sum(h.get("guard_triggered", 0) for h in trainer.state.log_history) == 4


def test_retain_guard_shrink_limits_damage(memorised_llava, toy_data, tmp_path):
    results = {}
    for guard in (None, 0.2):
        model, processor = load_llava(memorised_llava)
        cfg = args(tmp_path, max_steps=6, forget_every=1, learning_rate=5e-3, retain_guard_max_loss=guard)
        MMUnlearnerTrainer(model=model, args=cfg, train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"],
                           processing_class=processor).train()
        results[guard] = mean_nll(model, processor, toy_data["retain"])
    assert results[0.2] < results[None]


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="schedule"):
        args(tmp_path, schedule="sometimes")
    with pytest.raises(ValueError, match="needs a retain term"):
        args(tmp_path, schedule="alternate", retain_loss_type="none")
    with pytest.raises(ValueError, match="masked_lr_scale"):
        args(tmp_path, masked_lr_scale=0.0)
    with pytest.raises(ValueError, match="retain_guard_shrink"):
        args(tmp_path, retain_guard_shrink=1.5)


def test_warns_without_mask(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    with pytest.warns(UserWarning, match="not MMUnlearner"):
        MMUnlearnerTrainer(model=model, args=args(tmp_path), train_dataset=toy_data["forget"],
                           retain_dataset=toy_data["retain"], processing_class=processor)


def test_masked_parameters_train_at_the_scaled_learning_rate(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    name = "model.multi_modal_projector.linear_1.weight"
    mask = {name: torch.ones_like(dict(model.named_parameters())[name], dtype=torch.bool)}
    cfg = args(tmp_path, max_steps=2, learning_rate=1e-3, freeze_unmasked_parameters=False, lr_scheduler_type="linear")
    trainer = MMUnlearnerTrainer(model=model, args=cfg, train_dataset=toy_data["forget"],
                                 retain_dataset=toy_data["retain"], processing_class=processor, saliency_mask=mask)
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    params = dict(model.named_parameters())
    assert lr_of[id(params[name])] == pytest.approx(1e-2)  # masked_lr_scale=10 by default
    assert lr_of[id(params["model.language_model.layers.0.mlp.up_proj.weight"])] == pytest.approx(1e-3)
    trainer.train()
    lrs = trainer.lr_scheduler.get_last_lr()
    assert max(lrs) == pytest.approx(10 * min(lrs))  # the schedule scales both groups alike
    assert trainer.state.log_history[0]["learning_rate"] == pytest.approx(1e-3)  # the user's value is logged
