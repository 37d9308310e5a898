"""Optimizer-step time with the divergence guard on against off (``divergence_guard``, issue 12 case 2).

``GATrainer`` (forget term only) and ``GATrainer`` GA_Diff (forget + retain passes), each with
``divergence_guard=True`` (the default: gradient-norm check, in-place copy of the trainable weights before the
step, update-norm check after it) against ``divergence_guard=False``, on the same model, data and seed. The variants
train in threads taking turns step by step (``common.RoundRobin``), so each ratio is between adjacent steps; the
order is reversed every other repetition. Saves are off: the pre-save check costs one forward pass per checkpoint.

    python benchmarks/bench_divergence_guard.py --quick      # tiny model, 2 repetitions
    python benchmarks/bench_divergence_guard.py              # tiny and mid, 5 repetitions
"""

from __future__ import annotations

import statistics

import common
from common import Row, Settings, StepTimer

VARIANTS = ("ga_off", "ga_on", "diff_off", "diff_on")
PAIRS = (("ga_off", "ga_on"), ("diff_off", "diff_on"))
LABELS = {"ga_off": "GA, guard off", "ga_on": "GA, guard on", "diff_off": "GA_Diff, guard off",
          "diff_on": "GA_Diff, guard on"}


def build_trainer(variant: str, settings: Settings, model_dir: str, forget, retain, max_steps: int):
    from hf_unlearn import GAConfig, GATrainer

    model, processor = common.load_model(model_dir)
    args = common.base_args(settings, f"{settings.workdir}/guard-{variant}", max_steps)
    diff = variant.startswith("diff")
    config = GAConfig(**args, retain_loss_type="nll" if diff else "none", divergence_guard=variant.endswith("on"))
    return GATrainer(model=model, args=config, train_dataset=forget, retain_dataset=retain if diff else None,
                     processing_class=processor)


def measure(settings: Settings, size: str, log=print) -> list[Row]:
    data = common.benchmark_data()
    forget = data["forget_vqa"].select(range(common.BATCH_SIZE))
    retain = data["retain_vqa"].select(range(common.BATCH_SIZE))
    model_dir = common.saved_model_dir(settings, size)
    label = common.size_label(size, common.num_parameters(model_dir))
    warmup, timed = (1, 4) if settings.quick else (2, 8)
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in PAIRS}
    for rep in range(settings.reps):
        order = common.alternating(list(VARIANTS), rep)
        turns = common.RoundRobin(len(order))
        trainers, timers = [], []
        for i, variant in enumerate(order):
            trainer = build_trainer(variant, settings, model_dir, forget, retain, warmup + timed + 1)
            timer = StepTimer(warmup, settings.device, turns=turns, index=i)
            timer.attach(trainer)
            trainers.append(trainer)
            timers.append(timer)
        common.run_round_robin(trainers, timers)
        times = {variant: timer.timed for variant, timer in zip(order, timers)}
        del trainers, timers
        common.free_memory()
        for v in VARIANTS:
            medians[v].append(1e3 * statistics.median(times[v]))
        for a, b in PAIRS:
            ratios[(a, b)].append(statistics.median(tb / ta for ta, tb in zip(times[a], times[b])))
        log(f"  guard {size} rep {rep + 1}/{settings.reps}: "
            + ", ".join(f"{v}={medians[v][-1]:.0f}ms" for v in VARIANTS))
    return [Row(f"step time: {LABELS[b]} / {LABELS[a]}", label, LABELS[a], LABELS[b], "ms", medians[a], medians[b],
                paired_ratios=ratios[(a, b)], goal=1.05) for a, b in PAIRS]


def main(argv=None) -> list[Row]:
    return common.standalone_main(__doc__.splitlines()[0], measure, argv)


if __name__ == "__main__":
    main()
