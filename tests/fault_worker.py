"""Worker for faults under one process or ``torchrun`` (``tests/test_distributed_faults.py``, ``scripts/sigkill_battery.py``).

Every run trains the tiny LLaVA of ``tests/distributed_worker.py`` (its ``init`` folder and its hard data: retain rows
text-only and with images) with ``GATrainer`` for ``STEPS`` steps, a checkpoint every step, then ``save_model()``;
``gloo`` and ``use_cpu=True`` under torchrun. ``python tests/fault_worker.py WORKDIR JOB [JOB ...]`` runs the jobs in
order in one process tree (``torchrun --nproc_per_node 2`` in front for 2 processes):

* ``train:OUT``: resume from OUT's last complete checkpoint if there is one (else start), train to the end,
  save, and write the final weights (``OUT.fp32.safetensors``, rank 0). Killed and rerun by the SIGKILL battery.
  Rank 0 writes ``OUT.started`` when training starts; every rank writes its pid to ``OUT.rank<r>.pid``.
* ``crash:OUT``: the run to kill: while checkpoint-2 writes ``optimizer.pt`` rank 0 writes half of it,
  writes its pid to ``OUT.ready`` and waits to be killed (one rank is SIGKILLed in the middle of a checkpoint write).
* ``nan:ddp``, ``nan:fsdp2``, ``nan:single``: a NaN is injected into the gradient at step ``NAN_STEP`` (rank 0's
  backward only, before the ranks' reduction: the reduction spreads it as a real one would be). Records the
  ``UnlearningDivergedError`` message and whether every rank's weights are bit for bit those before that step, in
  ``WORKDIR/nan_<launcher>.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from safetensors.torch import save_file  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hf_unlearn import GAConfig, GATrainer  # noqa: E402
from hf_unlearn.integrations.ranks import end_distributed  # noqa: E402
from hf_unlearn.trainers.checkpointing import scan_checkpoints  # noqa: E402
from hf_unlearn.trainers.divergence import UnlearningDivergedError, _local  # noqa: E402

from distributed_worker import GLOBAL_BATCH, data, fsdp_kwargs  # noqa: E402

STEPS = 4
NAN_STEP = 2
CRASH_STEP = 2


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def ranks() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def build(workdir: str, out: str, launcher: str = "ddp", **overrides) -> GATrainer:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    init = os.path.join(workdir, "init")
    extra = fsdp_kwargs() if launcher == "fsdp2" else {}
    values = dict(output_dir=out, per_device_train_batch_size=1, gradient_accumulation_steps=GLOBAL_BATCH // ranks(),
                  max_steps=STEPS, learning_rate=1e-3, logging_steps=1, save_strategy="steps", save_steps=1, seed=0,
                  report_to="none", use_cpu=True, disable_tqdm=True, retain_loss_type="nll", **extra)
    values.update(overrides)
    args = GAConfig(**values)
    model = AutoModelForImageTextToText.from_pretrained(init)
    processor = AutoProcessor.from_pretrained(init)
    _, forget, retain = data()
    return GATrainer(model=model, args=args, train_dataset=forget, retain_dataset=retain,
                     processing_class=processor)


def _gather(value) -> list:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


# ------------------------------------------------------------------------------------------------------------------
# train: the run the SIGKILL battery kills and reruns
# ------------------------------------------------------------------------------------------------------------------
class _Started(TrainerCallback):
    def __init__(self, path: str):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if rank() == 0:
            with open(self.path, "w") as f:
                f.write(str(time.time()))


def train(workdir: str, out: str) -> None:
    with open(f"{out}.rank{rank()}.pid", "w") as f:
        f.write(str(os.getpid()))
    trainer = build(workdir, out)
    trainer.add_callback(_Started(f"{out}.started"))
    complete, _ = scan_checkpoints(out)
    trainer.train(resume_from_checkpoint=True if complete else None)
    trainer.save_model()
    if rank() == 0:
        params = {n: p.detach().float().clone().contiguous() for n, p in trainer.model.named_parameters()}
        save_file(params, f"{out}.fp32.safetensors")


# ------------------------------------------------------------------------------------------------------------------
# crash: rank 0 is killed in the middle of writing checkpoint-2's optimizer.pt
# ------------------------------------------------------------------------------------------------------------------
def crash(workdir: str, out: str) -> None:
    trainer = build(workdir, out)
    real_save = torch.save

    def half_written_then_wait(obj, f, *a, **kw):
        if isinstance(f, str) and f.endswith("optimizer.pt") and trainer.state.global_step == CRASH_STEP:
            buffer = io.BytesIO()
            real_save(obj, buffer, *a, **kw)
            with open(f, "wb") as target:
                target.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                target.flush()
                os.fsync(target.fileno())
            with open(out + ".ready.part", "w") as ready:
                ready.write(str(os.getpid()))
            os.replace(out + ".ready.part", out + ".ready")
            while True:  # the test SIGKILLs this process (rank 0) now
                time.sleep(1)
        return real_save(obj, f, *a, **kw)

    torch.save = half_written_then_wait
    trainer.train()
    raise SystemExit("the worker was not killed")


# ------------------------------------------------------------------------------------------------------------------
# nan: a NaN gradient at step NAN_STEP
# ------------------------------------------------------------------------------------------------------------------
class _NanGradient(torch.autograd.Function):
    """Identity forward (the loss stays finite), NaN backward: every gradient upstream becomes NaN."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, float("nan"))


class _NanAtStep(TrainerCallback):
    """Rank 0's lm_head output carries a NaN backward during step ``step``; keeps each rank's weights before it."""

    def __init__(self, trainer, step: int):
        self.trainer, self.step, self.before = trainer, step, None
        self.injected = 0
        lm_head = trainer.model.get_output_embeddings()
        lm_head.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if rank() == 0 and self.trainer.state.global_step + 1 == self.step and torch.is_grad_enabled():
            self.injected += 1
            return _NanGradient.apply(output)
        return output

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            self.before = [_local(p).detach().clone() for p in self.trainer.model.parameters()]


def nan(workdir: str, launcher: str) -> None:
    out = os.path.join(workdir, f"nan_{launcher}")
    if launcher == "fsdp2":
        from hf_unlearn.integrations.fsdp import allow_fsdp_on_cpu

        allow_fsdp_on_cpu()
    trainer = build(workdir, out, launcher=launcher, save_strategy="no", max_grad_norm=0.0)
    poison = _NanAtStep(trainer, NAN_STEP)
    trainer.add_callback(poison)
    message = None
    try:
        trainer.train()
    except UnlearningDivergedError as err:
        message = str(err)
    restored = poison.before is not None and all(
        torch.equal(_local(p).detach(), b) for p, b in zip(trainer.model.parameters(), poison.before))
    result = {"messages": _gather(message), "restored": _gather(restored), "injected": _gather(poison.injected),
              "global_step": trainer.state.global_step, "wrapper": type(trainer.model_wrapped).__name__}
    if rank() == 0:
        with open(os.path.join(workdir, f"nan_{launcher}.json"), "w") as f:
            json.dump(result, f, indent=1)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("jobs", nargs="+", help="train:OUT, crash:OUT or nan:ddp|fsdp2|single, run in this order")
    args = parser.parse_args()
    for job in args.jobs:
        mode, _, value = job.partition(":")
        if mode == "train":
            train(args.workdir, value)
        elif mode == "crash":
            crash(args.workdir, value)
        elif mode == "nan":
            nan(args.workdir, value)
        else:
            parser.error(f"unknown job {job!r}")
    end_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
