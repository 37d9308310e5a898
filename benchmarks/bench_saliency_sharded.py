"""Saliency-mask computation sharded under DeepSpeed ZeRO-3 (2 processes) against one forward + backward pass.

``python benchmarks/bench_saliency_sharded.py [--quick] [--sizes tiny mid]`` starts ``torchrun --nproc_per_node 2``
(gloo on CPU, NCCL with ``--device cuda`` and 2 GPUs) on itself. Both ranks load the size's model partitioned
(``TrainingArguments(deepspeed=ZeRO-3)`` then ``from_pretrained``: ``zero.Init``) and take the same data as
``bench_saliency.py`` (12 forget rows, 12 rows per preserve set, batches of 4, the same global batch on every rank):

* A, ``pass``: one forward + backward pass over exactly those batches through the partitioned model (DeepSpeed's
  gathering hooks, built and removed as the mask computation does; eval mode; gradients only for the covered
  parameters, each dropped as soon as autograd has accumulated it). The floor of any gradient-based score under
  ZeRO-3.
* B, ``mask``: ``compute_saliency_mask`` (Fisher ratio) on the partitioned model: each rank keeps the fp32 sums of its
  own partition, the mask assembled at the end.
* C, ``one process``: rank 0 alone runs A's pass on the unpartitioned model (rank 1 waits): the single-process pass
  over the same global batch, for B / C (information: what ZeRO-3's gathering costs on this machine, not the mask).

Times are taken on rank 0 between barriers (so they include waiting for the slower rank), the order of A and B
reversed every other repetition; the ratio is B / A per repetition.
"""

from __future__ import annotations

import json
import os
import sys
import time

import common
from common import Row, Settings

PRESETS = ("vision", "both")
ZERO3 = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
         "zero_optimization": {"stage": 3, "overlap_comm": False, "stage3_param_persistence_threshold": "auto",
                               "stage3_prefetch_bucket_size": "auto"},
         "bf16": {"enabled": False}, "fp16": {"enabled": False}}


# ------------------------------------------------------------------------------------------------------ worker side
def zero3_pass(model, datasets, collator, param_names: list[str], batch_size: int, device: str) -> None:
    """``bench_saliency.forward_backward_pass`` through a ZeRO-3 partitioned model: DeepSpeed's gathering hooks, and
    every full gradient dropped as soon as it is accumulated (no rank may hold them all)."""
    import bench_saliency

    from hf_unlearn.integrations.deepspeed import zero3_gathering

    params = dict(model.named_parameters())

    def drop(p):
        p.grad = None

    handles = [params[n].register_post_accumulate_grad_hook(drop) for n in param_names]
    try:
        with zero3_gathering(model):
            bench_saliency.forward_backward_pass(model, datasets, collator, param_names, batch_size, device)
    finally:
        for handle in handles:
            handle.remove()


def worker(settings: Settings, size: str, model_dir: str, out: str) -> None:
    import bench_saliency
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainingArguments

    from hf_unlearn import SaliencyMaskConfig, UnlearnDataCollator, compute_saliency_mask

    if settings.device == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # no JIT build; plain gloo
    deepspeed.init_distributed(dist_backend="gloo" if settings.device == "cpu" else "nccl")
    rank = dist.get_rank()
    device = settings.device if settings.device == "cpu" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    plain = AutoModelForImageTextToText.from_pretrained(model_dir).to(device) if rank == 0 else None
    processor = AutoProcessor.from_pretrained(model_dir)
    TrainingArguments(output_dir=settings.workdir, deepspeed=ZERO3, use_cpu=settings.use_cpu, report_to="none")
    model = AutoModelForImageTextToText.from_pretrained(model_dir)  # partitioned while loading (zero.Init)
    collator = UnlearnDataCollator(processor)
    forget, preserve = bench_saliency.datasets_for(common.benchmark_data())
    result = {}
    for preset in PRESETS:
        config = SaliencyMaskConfig(target_modules=preset, batch_size=common.BATCH_SIZE)
        targets = config.resolve_targets(model)
        names = list(targets)
        needed = sorted({s for group in set(targets.values()) for s in config.preserve_set_names(group)})
        sets = {name: preserve[name] for name in needed}
        datasets = [forget, *sets.values()]
        times: dict[str, list[float]] = {"pass": [], "mask": [], "one": []}
        for rep in range(settings.reps):
            for variant in common.alternating(["pass", "mask"], rep) + ["one"]:
                dist.barrier()
                common.synchronize(settings.device)
                t0 = time.perf_counter()
                if variant == "pass":
                    zero3_pass(model, datasets, collator, names, common.BATCH_SIZE, device)
                elif variant == "mask":
                    mask = compute_saliency_mask(model, config, forget, sets, collator, show_progress=False)
                elif rank == 0:
                    bench_saliency.forward_backward_pass(plain, datasets, collator, names, common.BATCH_SIZE, device)
                common.synchronize(settings.device)
                dist.barrier()
                times[variant].append(time.perf_counter() - t0)
        result[preset] = {"times": times, "tensors": len(names), "covered": mask.num_covered,
                          "sets": list(sets), "rows": {"forget": len(forget), **{k: len(v) for k, v in sets.items()}}}
    if rank == 0:
        common.write_atomic(out, json.dumps({"size": size, "presets": result}))


# ------------------------------------------------------------------------------------------------------ parent side
def measure(settings: Settings, size: str, log=print) -> list[Row]:
    model_dir = common.saved_model_dir(settings, size)
    label = common.size_label(size, common.num_parameters(model_dir))
    presets = common.run_torchrun_worker(__file__, settings, size, model_dir,
                                         DS_ACCELERATOR="cpu" if settings.device == "cpu" else "cuda")["presets"]
    rows = []
    for preset, r in presets.items():
        t = r["times"]
        log(f"  sharded saliency {size}/{preset}: pass={min(t['pass']):.2f}s mask={min(t['mask']):.2f}s "
            f"one process={min(t['one']):.2f}s")
        sets = "+".join(r["sets"])
        rows.append(Row(
            f"4s. saliency ({preset}), ZeRO-3 2 ranks / one fwd+bwd pass", label,
            f"ZeRO-3 fwd+bwd over forget + {sets} ({r['tensors']} tensors)", "compute_saliency_mask, sharded", "s",
            t["pass"], t["mask"], goal=1.1,
            extra={"covered_parameters": r["covered"], "rows": r["rows"], "ranks": 2},
            note="every rank runs every batch; each keeps the fp32 sums of its own partition"))
        rows.append(Row(
            f"4t. saliency ({preset}), ZeRO-3 2 ranks / one process's fwd+bwd", label,
            f"one process: fwd+bwd over forget + {sets}", "compute_saliency_mask, sharded (2 ranks)", "s",
            t["one"], t["mask"], extra={"covered_parameters": r["covered"], "rows": r["rows"], "ranks": 2},
            note="information: ZeRO-3's per-module gathering (gloo on CPU) included"))
    return rows


def _worker_main(argv: list[str]) -> None:
    common.torchrun_worker_main(argv, worker, "hf_unlearn_sharded_saliency_")


def main(argv=None) -> list[Row]:
    return common.standalone_main(__doc__.splitlines()[0], measure, argv, processes=2)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        _worker_main(sys.argv[1:])
    else:
        main()
