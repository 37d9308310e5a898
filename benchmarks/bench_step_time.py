"""Optimizer-step time of unlearning trainers against the plain ``transformers.Trainer`` (measurements 1 and 2).

1. GA / Trainer: ``GATrainer`` (forget term only) against ``Trainer`` fine-tuning on the same 4 rows (batch 4, so
   every step sees the same batch), same optimizer, lr, clipping. GA_Diff (a forget and a retain forward/backward per
   step) is shown against the same ``Trainer`` for information.
2. Mask overhead: ``MMUnlearnerTrainer`` with a vision + projector saliency mask (``mask_scope="all"``, GA forget
   loss, joint schedule, no retain term) against the same class with no mask but the same frozen set (the language
   model frozen by hand), so the difference is what the mask costs per step. Without weight decay (2.) nothing can
   move a masked entry and only the gradient masking runs; with ``weight_decay=0.1`` (2b.) the masked values of every
   decayed tensor are also put back after each step (the worst case of a fully masked step).

Each repetition trains every variant on a fresh copy of the model, each in its own thread, the threads taking turns
at every optimizer step (``common.RoundRobin``): step k of every variant runs in the same round, so a ratio is taken
between adjacent steps (median over the rounds of a repetition), and load changes slower than a round cancel. The
order of the variants in a round is reversed every other repetition.
"""

from __future__ import annotations

import statistics
import warnings

import common
from common import Row, Settings, StepTimer

VARIANTS = ("trainer", "ga", "ga_diff", "mm_nomask", "mm_mask", "mm_nomask_wd", "mm_mask_wd")
PAIRS = (("trainer", "ga"), ("trainer", "ga_diff"), ("mm_nomask", "mm_mask"), ("mm_nomask_wd", "mm_mask_wd"))
LABELS = {
    "trainer": "transformers.Trainer",
    "ga": "GATrainer (GA)",
    "ga_diff": "GATrainer (GA_Diff, +retain pass)",
    "mm_nomask": "MMUnlearnerTrainer, no mask, same frozen set",
    "mm_mask": "MMUnlearnerTrainer, vision+projector mask",
    "mm_nomask_wd": "MMUnlearnerTrainer, no mask, same frozen set, weight decay 0.1",
    "mm_mask_wd": "MMUnlearnerTrainer, vision+projector mask, weight decay 0.1",
}
WEIGHT_DECAY = {"mm_nomask_wd": 0.1, "mm_mask_wd": 0.1}


def vision_mask(model_dir: str):
    """A random 50% mask over the vision tower and projector (every covered tensor is partially masked, so the
    snapshot/restore runs on all of them: the mask's worst case)."""
    from hf_unlearn import SaliencyMaskConfig, compute_saliency_mask

    model, _ = common.load_model(model_dir)
    cfg = SaliencyMaskConfig(target_modules="vision", score="random", threshold=0.5)
    return compute_saliency_mask(model, cfg, None, None, None, show_progress=False)


def build_trainer(variant: str, settings: Settings, model_dir: str, forget, retain, mask, max_steps: int):
    from transformers import Trainer, TrainingArguments

    from hf_unlearn import GAConfig, GATrainer, MMUnlearnerConfig, MMUnlearnerTrainer, UnlearnDataCollator

    model, processor = common.load_model(model_dir)
    out = f"{settings.workdir}/step-{variant}"
    args = common.base_args(settings, out, max_steps, weight_decay=WEIGHT_DECAY.get(variant, 0.0))
    if variant == "trainer":
        return Trainer(model=model, args=TrainingArguments(**args), train_dataset=forget,
                       data_collator=UnlearnDataCollator(processor))
    if variant in ("ga", "ga_diff"):
        retain_type = "none" if variant == "ga" else "nll"
        return GATrainer(model=model, args=GAConfig(**args, retain_loss_type=retain_type), train_dataset=forget,
                         retain_dataset=retain if variant == "ga_diff" else None, processing_class=processor)
    config = MMUnlearnerConfig(**args, schedule="joint", retain_loss_type="none", mask_scope="all",
                               forget_loss_type="ga")
    if variant.startswith("mm_nomask"):
        covered = set(mask.names())
        for name, p in model.named_parameters():
            p.requires_grad_(name in covered)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "without saliency_mask ... alternating GA_Diff": intended here
            return MMUnlearnerTrainer(model=model, args=config, train_dataset=forget, processing_class=processor)
    return MMUnlearnerTrainer(model=model, args=config, train_dataset=forget, processing_class=processor,
                              saliency_mask=mask)


def run_rep(settings, model_dir, forget, retain, mask, order: list[str], warmup: int, timed: int) -> tuple[dict, dict]:
    """One repetition: every variant trains on a fresh copy of the model in its own thread, the threads taking turns
    step by step in ``order``. Returns each variant's timed step times and their CPU times (s), by step index."""
    turns = common.RoundRobin(len(order))
    trainers, timers = [], []
    for i, variant in enumerate(order):
        trainer = build_trainer(variant, settings, model_dir, forget, retain, mask, warmup + timed + 1)
        timer = StepTimer(warmup, settings.device, turns=turns, index=i)
        timer.attach(trainer)
        trainers.append(trainer)
        timers.append(timer)
    common.run_round_robin(trainers, timers)
    for trainer in trainers:
        if getattr(trainer, "masker", None) is not None:
            trainer.masker.remove()
    times = {variant: timer.timed for variant, timer in zip(order, timers)}
    cpu = {variant: timer.timed_cpu for variant, timer in zip(order, timers)}
    del trainers, timers
    common.free_memory()
    return times, cpu


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over step indices of B's step / A's step taken in the same round."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))


def measure(settings: Settings, size: str, log=print) -> list[Row]:
    data = common.benchmark_data()
    forget = data["forget_vqa"].select(range(common.BATCH_SIZE))
    retain = data["retain_vqa"].select(range(common.BATCH_SIZE))
    model_dir = common.saved_model_dir(settings, size)
    label = common.size_label(size, common.num_parameters(model_dir))
    mask = vision_mask(model_dir)
    warmup, timed = (1, 3) if settings.quick else (2, 6)
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}  # per repetition, ms
    ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in PAIRS}
    cpu_ratios: dict[tuple[str, str], list[float]] = {pair: [] for pair in PAIRS}
    for rep in range(settings.reps):
        times, cpu = run_rep(settings, model_dir, forget, retain, mask, common.alternating(list(VARIANTS), rep),
                             warmup, timed)
        for v in VARIANTS:
            medians[v].append(1e3 * statistics.median(times[v]))
        for a, b in PAIRS:
            ratios[(a, b)].append(paired(times, a, b))
            cpu_ratios[(a, b)].append(paired(cpu, a, b))
        log(f"  step time {size} rep {rep + 1}/{settings.reps}: "
            + ", ".join(f"{v}={medians[v][-1]:.0f}ms" for v in VARIANTS))

    def row(title, a, b, extra=None, **kw):
        return Row(title, label, LABELS[a], LABELS[b], "ms", medians[a], medians[b], paired_ratios=ratios[(a, b)],
                   extra={"cpu_ratios": cpu_ratios[(a, b)], **(extra or {})}, **kw)

    return [
        row("1. step time: GA / Trainer", "trainer", "ga", goal=1.1),
        row("1b. step time: GA_Diff / Trainer", "trainer", "ga_diff",
            note="two forward/backward passes per step (forget + retain); expected near 2"),
        row("2. step time: MMUnlearner mask / no mask", "mm_nomask", "mm_mask", goal=1.05,
            extra={"covered_parameters": mask.num_covered}),
        row("2b. step time: MMUnlearner mask / no mask, weight decay", "mm_nomask_wd", "mm_mask_wd", goal=1.05,
            extra={"covered_parameters": mask.num_covered}),
    ]


def main(argv=None) -> list[Row]:
    return common.standalone_main(__doc__.splitlines()[0], measure, argv)

if __name__ == "__main__":
    main()
