"""Saves are whole or absent, resume uses the last complete checkpoint, one run per output_dir (issue 12, cases 3-5).

The two crash tests SIGKILL a child process (``tests/crash_worker.py``) while it is in the middle of writing a file:
the child writes half the file, creates a marker file and waits; the test waits for the marker, then kills it.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from hf_unlearn import GAConfig, GATrainer, NPOConfig, NPOTrainer, SaliencyMask
from hf_unlearn.trainers.checkpointing import (
    LOCK_NAME,
    MANIFEST_NAME,
    OutputDirInUseError,
    ResumeMismatchError,
    rotate_checkpoints,
)

from conftest import load_llava

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "crash_worker.py")


def args_for(out, **kw):
    values = dict(output_dir=str(out), per_device_train_batch_size=2, max_steps=3, learning_rate=1e-3, use_cpu=True,
                  disable_tqdm=True, logging_steps=1, seed=0, save_strategy="steps", save_steps=1)
    values.update(kw)
    return values


def ga_trainer(memorised_llava, toy_data, out, config_cls=GAConfig, trainer_cls=GATrainer, eval_dataset=None, **kw):
    model, processor = load_llava(memorised_llava)
    trainer = trainer_cls(model=model, args=config_cls(**args_for(out, **kw)), train_dataset=toy_data["forget"],
                          retain_dataset=toy_data["retain"], processing_class=processor, eval_dataset=eval_dataset)
    return model, trainer


def start_and_wait_for_crash_point(mode, model_dir, out, tmp_path):
    """Start the worker and return (process, the path it was writing) once it is mid-write."""
    ready = tmp_path / f"{mode}.ready"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, WORKER, mode, model_dir, str(out), str(ready)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not ready.exists():  # an event, not a guess: the worker creates the file once it is mid-write
        if proc.poll() is not None:
            pytest.fail(f"worker exited early:\n{proc.stdout.read().decode()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("worker never reached the crash point")
        time.sleep(0.05)
    return proc, ready.read_text()


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_during_save_model_keeps_the_earlier_model(memorised_llava, tmp_path):
    out = tmp_path / "run"
    proc, writing = start_and_wait_for_crash_point("save_model", memorised_llava, out, tmp_path)
    good = LlavaForConditionalGeneration.from_pretrained(out).state_dict()  # the first save, read while it waits
    assert writing != str(out / "model.safetensors")  # the new weights are written elsewhere ...
    assert os.path.getsize(writing) > 0
    kill(proc)
    reloaded = LlavaForConditionalGeneration.from_pretrained(out)  # ... so the earlier model is intact
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in good.items())
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["files"]["model.safetensors"] == os.path.getsize(out / "model.safetensors")


def test_sigkill_during_checkpoint_resume_uses_last_complete_and_lock_refuses_second_run(
        memorised_llava, toy_data, tmp_path):
    out = tmp_path / "run"
    proc, writing = start_and_wait_for_crash_point("checkpoint", memorised_llava, out, tmp_path)
    assert writing.endswith(os.path.join("checkpoint-2.tmp", "checkpoint-2", "optimizer.pt"))
    # Case 4: while that run holds the folder, a second run on it is refused, naming it.
    _, second = ga_trainer(memorised_llava, toy_data, out)
    with pytest.raises(OutputDirInUseError, match=rf"output_dir '{out}' is in use by another run \(pid {proc.pid}"):
        second.train()
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2.tmp", LOCK_NAME]
    kill(proc)

    # Case 3: the killed run left checkpoint-2 half written; resume skips it (warning) and continues from checkpoint-1.
    model, resumed = ga_trainer(memorised_llava, toy_data, out)
    with pytest.warns(UserWarning) as caught:
        resumed.train(resume_from_checkpoint=True)
    messages = [str(w.message) for w in caught]
    assert any("no longer running" in m for m in messages)  # the dead run's lock is taken over
    assert any("Skipping incomplete checkpoint(s)" in m and "checkpoint-2.tmp" in m and "Resuming from checkpoint-1"
               in m for m in messages)
    assert resumed.state.global_step == 3
    assert sorted(os.listdir(out)) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]  # no lock, no .tmp left
    straight_model, straight = ga_trainer(memorised_llava, toy_data, tmp_path / "straight", save_strategy="no")
    straight.train()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in straight_model.state_dict().items())


def test_explicit_incomplete_checkpoint_falls_back_and_rotation_keeps_last_complete(memorised_llava, toy_data,
                                                                                     tmp_path):
    out = tmp_path / "run"
    _, trainer = ga_trainer(memorised_llava, toy_data, out, max_steps=3)
    trainer.train()
    # A checkpoint of the old layout, cut short (no manifest, weights truncated), e.g. by transformers' Trainer.
    broken = out / "checkpoint-4"
    broken.mkdir()
    data = (out / "checkpoint-3" / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match=r"checkpoint-4 \(trainer_state.json is missing or damaged, "
                                         r"model.safetensors: truncated data\).*Resuming from checkpoint-3"):
        assert trainer.resolve_resume_checkpoint(str(broken)) == str(out / "checkpoint-3")
    # A damaged file of a complete checkpoint is caught by its manifest.
    with open(out / "checkpoint-3" / "optimizer.pt", "ab") as f:
        f.write(b"x")
    with pytest.warns(UserWarning, match=r"checkpoint-3 \(optimizer.pt has \d+ bytes, \d+ were written\)"):
        assert trainer.resolve_resume_checkpoint(True) == str(out / "checkpoint-2")
    # Rotation counts complete checkpoints only: the broken newer ones never make it delete the last complete one.
    deleted = rotate_checkpoints(str(out), limit=1)
    assert deleted == [str(out / "checkpoint-1")]
    assert sorted(os.listdir(out)) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]


def test_save_model_removes_an_earlier_runs_mask_and_checkpoints_are_replaced_whole(memorised_llava, toy_data,
                                                                                      tmp_path):
    out = tmp_path / "run"
    model, processor = load_llava(memorised_llava)
    mask = SaliencyMask({n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters()
                         if "multi_modal_projector" in n})
    GATrainer(model=model, args=GAConfig(**args_for(out, max_steps=1, save_strategy="no")),
              train_dataset=toy_data["forget"], processing_class=processor, saliency_mask=mask).save_model()
    assert (out / "saliency_mask" / "saliency_mask.safetensors").is_file()
    assert "## Saliency mask" in (out / "README.md").read_text()
    # A later, unmasked run saves into the same folder: the old mask must not sit next to its weights and card.
    _, unmasked = ga_trainer(memorised_llava, toy_data, out, max_steps=1, retain_loss_type="nll")
    (out / "checkpoint-1").mkdir()
    (out / "checkpoint-1" / "hf_unlearn_state.json").write_text("{}")  # an earlier run's checkpoint, same step
    unmasked.train()
    unmasked.save_model()
    assert not (out / "saliency_mask").exists()
    assert "## Saliency mask" not in (out / "README.md").read_text()
    files = set(json.loads((out / MANIFEST_NAME).read_text())["files"])
    assert "model.safetensors" in files and not any(f.startswith("saliency_mask/") for f in files)
    assert not any(name.startswith(".tmp") or name.endswith((".tmp", ".old")) for name in os.listdir(out))
    assert not (out / "checkpoint-1" / "hf_unlearn_state.json").exists()  # replaced whole, not merged into
    assert (out / "checkpoint-1" / MANIFEST_NAME).is_file()


@pytest.mark.parametrize("change", ["method", "mask", "retain_loss"])
def test_resume_under_another_run_is_refused_with_what_differs(change, memorised_llava, toy_data, tmp_path):
    out = tmp_path / "run"
    model, processor = load_llava(memorised_llava)
    params = dict(model.named_parameters())
    names = [n for n in params if "multi_modal_projector" in n]
    g = torch.Generator().manual_seed(0)
    first_mask = SaliencyMask({n: torch.rand(params[n].shape, generator=g) < 0.5 for n in names})
    trainer = GATrainer(model=model, args=GAConfig(**args_for(out, max_steps=1)), train_dataset=toy_data["forget"],
                        retain_dataset=toy_data["retain"], processing_class=processor, saliency_mask=first_mask)
    trainer.train()
    model, processor = load_llava(memorised_llava)
    mask, cls, config_cls, extra = first_mask, GATrainer, GAConfig, {}
    if change == "method":
        cls, config_cls = NPOTrainer, NPOConfig
    elif change == "mask":  # the same parameters, other entries selected
        mask = SaliencyMask({n: ~m for n, m in first_mask.masks.items()})
    else:
        extra = dict(retain_loss_type="kl")
    resumed = cls(model=model, args=config_cls(**args_for(out, max_steps=2, **extra)),
                  train_dataset=toy_data["forget"], retain_dataset=toy_data["retain"], processing_class=processor,
                  saliency_mask=mask)
    expected = {"method": r"method: 'GA' in the checkpoint, 'NPO' now",
                "mask": r"saliency mask: sha256:\w+ in the checkpoint, sha256:\w+ now \(a different mask\)",
                "retain_loss": r"retain_loss_type: 'nll' in the checkpoint, 'kl' now"}[change]
    with pytest.raises(ResumeMismatchError, match=rf"Refusing to resume: .*checkpoint-1 was written by a different "
                                                  rf"run:\n  - {expected}"):
        resumed.train(resume_from_checkpoint=True)
    if change == "retain_loss":  # deliberately: the override resumes and says what differs
        with pytest.warns(UserWarning, match="retain_loss_type: 'nll' in the checkpoint, 'kl' now"):
            resumed.train(resume_from_checkpoint=True, allow_resume_mismatch=True)
        assert resumed.state.global_step == 2


def test_resume_with_a_mask_over_other_parameters_names_the_problem(memorised_llava, toy_data, tmp_path):
    out = tmp_path / "run"
    model, processor = load_llava(memorised_llava)
    params = dict(model.named_parameters())

    def mask_over(word):
        return SaliencyMask({n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items() if word in n})

    GATrainer(model=model, args=GAConfig(**args_for(out, max_steps=1)), train_dataset=toy_data["forget"],
              retain_dataset=toy_data["retain"], processing_class=processor,
              saliency_mask=mask_over("multi_modal_projector")).train()
    model, processor = load_llava(memorised_llava)
    params = dict(model.named_parameters())
    other = GATrainer(model=model, args=GAConfig(**args_for(out, max_steps=2)), train_dataset=toy_data["forget"],
                      retain_dataset=toy_data["retain"], processing_class=processor,
                      saliency_mask=mask_over("vision_tower"))
    # Even the override cannot fit the optimizer state to other parameters: a clear error, not torch's.
    with pytest.raises(ResumeMismatchError, match=r"trains other parameters than the checkpoint's run \(trainable "
                                                  r"parameters: 4 tensors .* in the checkpoint, \d+ tensors"):
        other.train(resume_from_checkpoint=True, allow_resume_mismatch=True)


def test_load_best_model_at_end_loads_the_best_checkpoint(memorised_llava, toy_data, tmp_path):
    out = tmp_path / "run"
    model, trainer = ga_trainer(memorised_llava, toy_data, out, max_steps=3, eval_strategy="steps", eval_steps=1,
                                load_best_model_at_end=True, metric_for_best_model="eval_loss",
                                greater_is_better=False, save_total_limit=1, eval_dataset=toy_data["forget"])
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best == str(out / "checkpoint-1")  # GA raises the loss: the first step is the best, renamed path kept
    assert sorted(os.listdir(out)) == ["checkpoint-1"]
    saved = LlavaForConditionalGeneration.from_pretrained(best).state_dict()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())  # Trainer alone kept step 3's
