"""Step time under DDP: hf_unlearn's step (no reducer, one gradient average per step) vs today's two-pass step.

``python benchmarks/bench_ddp_step.py [--quick] [--sizes tiny mid]`` starts ``torchrun --nproc_per_node 2`` (gloo on
CPU, NCCL with ``--device cuda`` and 2 GPUs) on itself; both ranks train GA_Diff (forget + retain term) on every
variant in turn, each on a fresh copy of the model:

* A, ``reducer``: the step before issue 13. Two forward passes (forget, retain) and one backward through the DDP
  wrapper; DDP's reducer all-reduces the gradients in buckets during that backward. It only works when both passes
  use the same parameters on every rank, so the retain rows here all have images (with a text-only retain batch it
  raises "Expected to mark a variable ready only once").
* B, ``averaged``: hf_unlearn's step (``integrations/ddp.py``). The same passes under ``no_sync()``, then one flag
  all-reduce and a bucketed all-reduce of the gradients after the backward (not overlapped with it).

Steps are timed from ``on_step_begin`` to ``on_step_end`` (forward, backward, gradient average, clipping, optimizer
step) on rank 0, after a barrier, with the variants' order reversed every other repetition. The ratio is B / A per
repetition (median of the step times of each variant). In one process the step is unchanged (the mechanism is a
no-op there), so its ratio is 1 by construction and not measured.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

import common
from common import Row, Settings

VARIANTS = ("reducer", "averaged")
LABELS = {"reducer": "DDP reducer, one backward (before issue 13)",
          "averaged": "hf_unlearn: no_sync + one gradient average per step"}


# ------------------------------------------------------------------------------------------------------ worker side
def _trainer(variant: str, settings: Settings, model_dir: str, forget, retain, steps: int):
    from hf_unlearn import GAConfig, GATrainer

    class TodaysStep(GATrainer):
        """The step before issue 13: the unlearning step straight through the DDP wrapper and its reducer."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            return self._unlearning_step(model, inputs, num_items_in_batch)

    cls = TodaysStep if variant == "reducer" else GATrainer
    model, processor = common.load_model(model_dir)
    args = GAConfig(**common.base_args(settings, f"{settings.workdir}/ddp-{variant}", steps), retain_loss_type="nll")
    return cls(model=model, args=args, train_dataset=forget, retain_dataset=retain, processing_class=processor)


def worker(settings: Settings, size: str, model_dir: str, out: str) -> None:
    import torch.distributed as dist

    data = common.benchmark_data()
    ranks = int(os.environ["WORLD_SIZE"])
    rows = common.BATCH_SIZE * ranks
    forget = data["forget_vqa"].select(range(min(rows, len(data["forget_vqa"]))))
    retain = data["retain_vqa"].select(range(rows))
    warmup, timed = (1, 3) if settings.quick else (2, 6)
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(settings.reps):
        for variant in common.alternating(list(VARIANTS), rep):
            trainer = _trainer(variant, settings, model_dir, forget, retain, warmup + timed + 1)
            timer = common.StepTimer(warmup, settings.device)
            timer.attach(trainer)
            if dist.is_initialized():
                dist.barrier()
            trainer.train()
            medians[variant].append(1e3 * statistics.median(timer.timed))
            del trainer
            common.free_memory()
    if int(os.environ.get("RANK", "0")) == 0:
        common.write_atomic(out, json.dumps({"size": size, "ms": medians}))


# ------------------------------------------------------------------------------------------------------ parent side
def measure(settings: Settings, size: str, log=print) -> list[Row]:
    model_dir = common.saved_model_dir(settings, size)
    label = common.size_label(size, common.num_parameters(model_dir))
    ms = common.run_torchrun_worker(__file__, settings, size, model_dir)["ms"]
    log(f"  ddp step {size}: " + ", ".join(f"{v}={statistics.median(ms[v]):.0f}ms" for v in VARIANTS))
    return [Row("DDP step time (2 processes): hf_unlearn / DDP reducer", label, LABELS["reducer"],
                LABELS["averaged"], "ms", ms["reducer"], ms["averaged"],
                note="GA_Diff, retain rows with images (the reducer fails on text-only ones); "
                     "the gradient average runs after the backward instead of overlapping it")]


def _worker_main(argv: list[str]) -> None:
    common.torchrun_worker_main(argv, worker, "hf_unlearn_ddp_bench_")


def main(argv=None) -> list[Row]:
    return common.standalone_main(__doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker_main(sys.argv[1:])
    else:
        main()
