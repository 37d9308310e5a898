"""The divergence guard (issue 12, case 2): nothing diverged is kept or saved, and the named checkpoint is good."""

import json
import math
import os

import pytest
import torch
from transformers import LlavaForConditionalGeneration, TrainerCallback

from hf_unlearn import GAConfig, GATrainer, UnlearningDivergedError
from hf_unlearn.trainers.checkpointing import MANIFEST_NAME

from conftest import load_llava, mean_nll


def absurd_args(tmp_path, **kw):
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=6, use_cpu=True,
                  disable_tqdm=True, logging_steps=1, seed=0, save_strategy="steps", save_steps=1,
                  retain_loss_type="none")
    values.update(kw)
    return GAConfig(**values)


@pytest.mark.parametrize("bound", ["default", None], ids=["update_bound", "pre_save_check"])
def test_absurd_lr_names_a_checkpoint_that_loads_with_finite_weights_and_loss(bound, memorised_llava, toy_data,
                                                                               tmp_path):
    # Warm-up makes step 1 harmless (lr 0) and step 2 absurd (lr 5e8): checkpoint-1 is good, everything after is not.
    # The default bound catches step 2 itself; without it, the check before saving checkpoint-2 does.
    model, processor = load_llava(memorised_llava)
    extra = {} if bound else {"max_weight_norm_change": None}
    args = absurd_args(tmp_path, learning_rate=1e9, warmup_steps=2, **extra)
    trainer = GATrainer(model=model, args=args, train_dataset=toy_data["forget"], processing_class=processor)
    where = ("step 2 changed the weight norm .* above max_weight_norm_change=1.0" if bound
             else r"weights about to be saved \(checkpoint-2\)")
    with pytest.raises(UnlearningDivergedError, match=rf"{where}.*the last checkpoint verified finite when saved is "
                                                      rf".*checkpoint-1\."):
        trainer.train()
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["checkpoint-1"]  # nothing after the last good state, no lock, no .tmp
    named = LlavaForConditionalGeneration.from_pretrained(out / "checkpoint-1")
    assert all(torch.isfinite(p).all() for p in named.parameters())
    loss = mean_nll(named, processor, toy_data["forget"])
    assert math.isfinite(loss) and loss < 0.2  # lr was 0 at step 1: the memorised model
    manifest = json.loads((out / "checkpoint-1" / MANIFEST_NAME).read_text())
    assert manifest["verified"]["finite"] and math.isfinite(manifest["verified"]["probe_loss"])
    # The model in memory was put back to the last good weights: checkpoint-1's, bit for bit.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in named.state_dict().items())


def test_finite_but_absurd_lr_is_caught_by_the_update_bound(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = GATrainer(model=model, args=absurd_args(tmp_path, learning_rate=1e4, save_strategy="no"),
                        train_dataset=toy_data["forget"], processing_class=processor)
    expected = (r"step 1 changed the weight norm from [\d.]+ to [\d.e+]+ \([\d.e+]+ times itself\), above "
                r"max_weight_norm_change=1.0.*no checkpoint verified finite")
    with pytest.raises(UnlearningDivergedError, match=expected):
        trainer.train()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())  # the step was undone exactly
    assert not os.path.exists(tmp_path / "out" / "hf_unlearn.lock")


class _NanGradientAt(TrainerCallback):
    def __init__(self, step):
        self.step, self.before = step, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            self.before = {k: v.clone() for k, v in model.state_dict().items()}
            next(p for p in model.parameters() if p.grad is not None).grad[0] = float("nan")


def test_non_finite_gradient_is_undone_and_named(memorised_llava, toy_data, tmp_path):
    model, processor = load_llava(memorised_llava)
    poison = _NanGradientAt(2)
    trainer = GATrainer(model=model, args=absurd_args(tmp_path, learning_rate=1e-3, save_strategy="no",
                                                      max_grad_norm=0.0),
                        train_dataset=toy_data["forget"], processing_class=processor, callbacks=[poison])
    with pytest.raises(UnlearningDivergedError, match=r"step 2 made the weights non-finite \(the gradient norm was "
                                                      r"nan\).*holds the weights from before that step"):
        trainer.train()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in poison.before.items())
    changes = [h["weight_norm_change"] for h in trainer.state.log_history if "weight_norm_change" in h]
    assert len(changes) == 1 and 0 < changes[0] < 0.01  # step 1's, logged
