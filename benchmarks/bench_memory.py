"""Peak memory and wall time of whole unlearning runs, each variant in a fresh process (measurements 3 and 6).

3. NPO with precomputed reference log-probs (``precompute_ref_log_probs=True``: no reference model is held) against
   GA, both updating every parameter on the same forget rows for the same steps. NPO with a live reference model (a
   frozen copy) is shown for contrast.
6. VKD against MMUnlearner on the same model, forget / retain rows and number of optimizer steps. MMUnlearner's run
   includes computing its Fisher-ratio saliency mask (the method needs it); VKD's includes its teacher set-up. Two
   MMUnlearner configurations: the defaults (vision + projector mask, everything else frozen, so it trains what VKD
   trains) and a whole-model mask (every parameter trains, as in the reference code's full fine-tuning). VKD runs
   with its defaults and with precomputed teacher features.

Memory: the peak above the process's baseline (CPU: resident set, ``VmHWM`` minus ``VmRSS`` at the start, after
``malloc_trim``; CUDA: ``torch.cuda.max_memory_allocated``), so it counts the weights, the reference / teacher,
gradients, optimizer state and activations, not the Python and library footprint shared by all variants. Every
variant runs in its own child process forked from a server that imported the libraries once, one at a time, in
alternating order; before the baseline each child runs its variant for 2 steps on the tiny model, so code pages and
lazy imports are already resident.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict

import common
from common import PeakMemory, Row, Settings

ROWS = 8  # forget rows and retain rows: 2 batches of 4 each
M3_VARIANTS = ("ga", "npo_pre", "npo_live")
M6_VARIANTS = ("mm", "mm_both", "vkd", "vkd_pre")
LABELS = {
    "ga": "GATrainer (GA)",
    "npo_pre": "NPOTrainer, precomputed reference",
    "npo_live": "NPOTrainer, live reference model",
    "mm": "MMUnlearner, vision mask (defaults)",
    "mm_both": "MMUnlearner, whole-model mask",
    "vkd": "VKDTrainer (defaults)",
    "vkd_pre": "VKDTrainer, precomputed teacher",
}


def vkd_available() -> bool:
    try:
        from hf_unlearn import VKDConfig  # noqa: F401
        from hf_unlearn.methods.vkd import VKDTrainer  # noqa: F401
    except ImportError:
        return False
    return True


def _train(variant: str, settings: Settings, model_dir: str, steps: int, forget, retain, text) -> dict:
    """Load the model and run one variant start to end; returns its times (s)."""
    from hf_unlearn import (
        GAConfig,
        GATrainer,
        MMUnlearnerConfig,
        MMUnlearnerTrainer,
        NPOConfig,
        NPOTrainer,
        SaliencyMaskConfig,
        UnlearnDataCollator,
        compute_saliency_mask,
    )

    model, processor = common.load_model(model_dir)
    t0 = time.perf_counter()
    args = common.base_args(settings, f"{settings.workdir}/mem-{variant}", steps)
    mask_s = 0.0
    if variant == "ga":
        trainer = GATrainer(model=model, args=GAConfig(**args, retain_loss_type="none"), train_dataset=forget,
                            processing_class=processor)
    elif variant in ("npo_pre", "npo_live"):
        config = NPOConfig(**args, retain_loss_type="none", precompute_ref_log_probs=variant == "npo_pre")
        trainer = NPOTrainer(model=model, args=config, train_dataset=forget, processing_class=processor)
    elif variant in ("mm", "mm_both"):
        model.to(settings.device)
        target = "vision" if variant == "mm" else "both"
        mask = compute_saliency_mask(model, SaliencyMaskConfig(target_modules=target, batch_size=common.BATCH_SIZE),
                                     forget, {"retain": retain, "text": text}, UnlearnDataCollator(processor),
                                     show_progress=False)
        mask_s = time.perf_counter() - t0
        trainer = MMUnlearnerTrainer(model=model, args=MMUnlearnerConfig(**args), train_dataset=forget,
                                     retain_dataset=retain, processing_class=processor, saliency_mask=mask)
    elif variant in ("vkd", "vkd_pre"):
        from hf_unlearn import VKDConfig
        from hf_unlearn.methods.vkd import VKDTrainer

        config = VKDConfig(**args, precompute_teacher_features=variant == "vkd_pre")
        trainer = VKDTrainer(model, config, train_dataset=forget, retain_dataset=retain, processing_class=processor)
    else:
        raise ValueError(f"Unknown variant {variant!r}.")
    common.quiet(trainer)
    t_train = time.perf_counter()
    trainer.train()
    common.synchronize(settings.device)
    end = time.perf_counter()
    if trainer.state.global_step != steps:
        raise RuntimeError(f"{variant} ran {trainer.state.global_step} steps, expected {steps}.")
    return {"wall_s": end - t0, "train_s": end - t_train, "mask_s": mask_s}


def run_variant(variant: str, settings_dict: dict, model_dir: str, warmup_dir: str, steps: int) -> dict:
    """Runs in a fresh child process: one variant, start to end; returns its peak memory and times.

    The variant first runs 2 steps on the tiny model (``warmup_dir``) so that lazily imported modules and the library
    code pages it touches are resident before the baseline is taken: the peak then counts what the model and the
    method need, not the ~80 MiB of code any first run faults in.
    """
    settings = Settings(**settings_dict)
    common.configure_torch(settings)
    warnings.simplefilter("ignore")
    data = common.benchmark_data()
    forget = data["forget_vqa"].select(range(ROWS))
    retain = data["retain_vqa"].select(range(ROWS))
    text = data["retain_qa"].select(range(ROWS))  # preserve set of the language part (whole-model mask only)
    _train(variant, settings, warmup_dir, 2, forget, retain, text)
    common.free_memory()
    memory = PeakMemory(settings.device)
    memory.start()
    times = _train(variant, settings, model_dir, steps, forget, retain, text)
    peak = memory.peak()
    return {"peak_mib": peak - memory.baseline_mib, "peak_abs_mib": peak, "baseline_mib": memory.baseline_mib,
            **times}


def repetitions(settings: Settings) -> int:
    """Memory is near-deterministic and whole runs are long: 3 repetitions (at least 2) bound the wall-time noise."""
    return max(2, min(settings.reps, 3))


def measure(settings: Settings, size: str, pool, log=print) -> list[Row]:
    model_dir = common.saved_model_dir(settings, size)
    warmup_dir = common.saved_model_dir(settings, "tiny")
    label = common.size_label(size, common.num_parameters(model_dir))
    steps3, steps6 = (2, 4) if settings.quick else (4, 8)
    has_vkd = vkd_available()
    variants = list(M3_VARIANTS) + [v for v in M6_VARIANTS if has_vkd or v.startswith("mm")]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    reps = repetitions(settings)
    for rep in range(reps):
        for variant in common.alternating(variants, rep):
            steps = steps3 if variant in M3_VARIANTS else steps6
            results[variant].append(
                common.run_isolated(pool, run_variant, variant, asdict(settings), model_dir, warmup_dir, steps))
        log(f"  memory {size} rep {rep + 1}/{reps}: " + ", ".join(
            f"{v}={results[v][-1]['peak_mib']:.0f}MiB/{results[v][-1]['wall_s']:.1f}s" for v in variants))

    def values(variant, key):
        return [r[key] for r in results[variant]]

    unit = "MiB" if settings.device == "cpu" else "MiB (CUDA)"
    rows = [
        Row("3. peak memory: NPO precomputed / GA", label, LABELS["ga"], LABELS["npo_pre"], unit,
            values("ga", "peak_mib"), values("npo_pre", "peak_mib"), goal=1.05, load_sensitive=False,
            extra={"steps": steps3, "absolute_peak_mib": {v: values(v, "peak_abs_mib") for v in M3_VARIANTS}}),
        Row("3b. peak memory: NPO live reference / GA", label, LABELS["ga"], LABELS["npo_live"], unit,
            values("ga", "peak_mib"), values("npo_live", "peak_mib"), note="contrast: holds a second model",
            load_sensitive=False),
    ]
    if not has_vkd:
        return rows
    for vkd, mm in (("vkd", "mm"), ("vkd", "mm_both"), ("vkd_pre", "mm")):
        extra = {"steps": steps6, "mm_mask_s": values(mm, "mask_s"), "mm_train_s": values(mm, "train_s"),
                 "vkd_train_s": values(vkd, "train_s")}
        rows += [
            Row("6. wall time: VKD / MMUnlearner", label, LABELS[mm], LABELS[vkd], "s",
                values(mm, "wall_s"), values(vkd, "wall_s"), goal=0.5, extra=extra),
            Row("6. peak memory: VKD / MMUnlearner", label, LABELS[mm], LABELS[vkd], unit,
                values(mm, "peak_mib"), values(vkd, "peak_mib"), goal=0.5, extra={"steps": steps6},
                load_sensitive=False),
        ]
    return rows


def main(argv=None) -> list[Row]:
    def measure_in_pool(settings: Settings, size: str) -> list[Row]:
        with common.isolated_pool(settings) as pool:
            return measure(settings, size, pool)

    return common.standalone_main(__doc__.splitlines()[0], measure_in_pool, argv, full_reps=3)

if __name__ == "__main__":
    main()
