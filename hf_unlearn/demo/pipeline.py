"""The built-in demo: synthetic benchmark -> vanilla and oracle tiny LLaVA -> every registered method -> report,
at one seed or several.

Per seed:
1. Build the synthetic benchmark (``SyntheticBenchmarkConfig``, seeded) and train a tokenizer on its text.
2. Train (or load from the cache) **vanilla** (all splits, forget images included) and **oracle** (the same minus the
   forget image questions) with a plain ``transformers.Trainer`` (``references.py``).
3. Starting from vanilla, run each method of ``METHODS`` on forget = forget_vqa, retain = retain_vqa + retain_qa +
   forget_qa (the forget people's text knowledge must stay); never-seen ``validation_vqa`` rows are the holdout that
   target-driven stopping may use.
4. Evaluate vanilla, oracle and every method down to the rows behind each metric (``evaluation.py``).

Over seeds, ``stats.summarise`` turns the rows into means, 95% intervals (bootstrap over seeds and questions), paired
differences to vanilla and oracle and the distance to the oracle's point; ``results.json``, ``report.md`` and
``tradeoff.png`` are written.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import datasets
import torch
from transformers import set_seed

from ..data.image_processing_memo import memoized_image_processing
from ..data.synthetic import build_synthetic_benchmark
from ..evaluation.report import plot_tradeoff, render_report, results_table, write_text
from ..evaluation.stats import RowValues, summarise
from ..provenance import environment
from ..trainers.registry import METHODS, MethodData, MethodUnavailableError
from .config import DemoConfig, DemoModelConfig, DemoTrainingConfig, default_cache_dir, library_version
from .evaluation import METRIC_KEYS, evaluate_rows, reference_nll
from .recipe import TUNED_FILE, build_demo_trainer, demo_hyperparameters
from .references import CACHE_MARKER, REFERENCE_MODELS, load_or_train_reference_models, train_reference_model

logger = logging.getLogger(__name__)

RESULT_KEYS = (*METRIC_KEYS, "wall_time_s", "train_steps")
# The point the tuning protocol and the paired comparisons measure a method's distance to the oracle on: forgetting
# (forget VQA), what must stay (forget QA: text knowledge of the same people; retain VQA; general visual skill).
DISTANCE_METRICS = ("forget_vqa_acc", "forget_qa_acc", "retain_vqa_acc", "general_acc")

__all__ = [
    "CACHE_MARKER", "DISTANCE_METRICS", "DemoConfig", "DemoModelConfig", "DemoTrainingConfig", "REFERENCE_MODELS",
    "RESULT_KEYS", "SeedResult", "default_cache_dir", "load_or_train_reference_models", "method_data", "run_demo",
    "run_method", "run_seed", "summarise_seeds", "train_reference_model", "write_outputs",
]  # fmt: skip


def method_data(benchmark: datasets.DatasetDict) -> MethodData:
    """Forget = forget_vqa; retain = retain_vqa + retain_qa + forget_qa; preserve sets for saliency masks; holdout =
    validation_vqa (never-seen people, never evaluated)."""
    text = datasets.concatenate_datasets([benchmark["retain_qa"], benchmark["forget_qa"]])
    retain = datasets.concatenate_datasets([benchmark["retain_vqa"], text])
    holdout = benchmark["validation_vqa"] if len(benchmark.get("validation_vqa", [])) > 0 else None
    return MethodData(forget=benchmark["forget_vqa"], retain=retain,
                      preserve={"retain": benchmark["retain_vqa"], "text": text}, holdout=holdout)


@contextmanager
def deterministic():
    """Deterministic torch kernels while the demo runs (restored afterwards): a seed gives one result per machine."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def run_method(
    name: str, vanilla, processor, data: MethodData, config: DemoConfig, **overrides: Any
) -> tuple[torch.nn.Module, float, str | None, int]:
    """Unlearn a copy of ``vanilla`` with the registered method; returns (model, seconds, note or None, steps).

    ``overrides`` replace the entry's hyperparameters (the tuning protocol's grid points). Raises
    ``MethodUnavailableError`` when the method's trainer cannot be imported.
    """
    from ..trainers.base import UnlearningDivergedError

    model = copy.deepcopy(vanilla)
    set_seed(config.seed)
    note = None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"hf_unlearn_{name}_") as tmp:
        # Quiet: the demo prints one table, not every method's loss log.
        trainer = build_demo_trainer(name, model, processor, data, tmp, config.seed, logging_strategy="no", **overrides)
        try:
            with memoized_image_processing(processor):  # the probe asks about each picture at every check
                trainer.train()
        except UnlearningDivergedError:
            # The diverging step never touched the weights: evaluate the model as it was before it.
            note = f"{name}: the loss diverged at step {trainer.state.global_step}; evaluated the last finite model."
        stopped = getattr(trainer, "stopped_early_at", None)
        if stopped:
            note = f"{name}: stopped early at step {stopped[0]} (forget NLL {stopped[1]:.1f})."
    seconds = time.perf_counter() - start
    steps = trainer.state.global_step
    model = trainer.model
    model.eval()
    del trainer
    return model, seconds, note, steps


def _check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; registered methods: {sorted(METHODS)}.")
    return list(methods)


@dataclass
class SeedResult:
    """One seed of the demo: the rows behind every metric of every model, and what happened on the way."""

    seed: int
    rows: dict[str, dict[str, RowValues]] = field(default_factory=dict)  # {model: {metric: rows}}
    notes: list[str] = field(default_factory=list)
    num_questions: dict[str, int] = field(default_factory=dict)
    cached: dict[str, bool] = field(default_factory=dict)
    epochs: dict[str, int | None] = field(default_factory=dict)  # vanilla: until memorised; oracle: as many

    def points(self) -> dict[str, dict[str, float]]:
        """``{model: {metric: value}}`` at this seed."""
        return {m: {k: r.point() for k, r in metrics.items()} for m, metrics in self.rows.items()}


def run_seed(
    config: DemoConfig,
    methods: Sequence[str],
    cache_dir: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    method_overrides: dict[str, dict[str, Any]] | None = None,
    evaluate: Callable[..., dict[str, RowValues]] | None = None,
) -> SeedResult:
    """Vanilla, oracle and every method at ``config.seed``. ``method_overrides`` maps a method to hyperparameter
    overrides; ``evaluate`` replaces ``evaluate_rows`` (the tuning protocol evaluates fewer metrics)."""
    evaluate = evaluate or evaluate_rows
    set_seed(config.seed)
    benchmark = build_synthetic_benchmark(config.benchmark)
    refs = load_or_train_reference_models(benchmark, config, cache_dir, show_progress, log)
    vanilla, processor = refs["vanilla"]["model"], refs["vanilla"]["processor"]
    result = SeedResult(seed=config.seed, num_questions={k: len(v) for k, v in benchmark.items()},
                        cached={k: refs[k]["cached"] for k in REFERENCE_MODELS},
                        epochs={k: refs[k].get("epochs") for k in REFERENCE_MODELS})
    common = dict(seed=config.seed, relearn=config.relearn, batch_size=config.eval_batch_size,
                  max_new_tokens=config.max_new_tokens)
    reference = reference_nll(refs["oracle"]["model"], processor, benchmark, config.eval_batch_size)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(REFERENCE_MODELS) + len(methods), desc=f"demo seed {config.seed}",
               disable=not show_progress)
    for kind in REFERENCE_MODELS:
        bar.set_postfix_str(f"evaluating {kind}")
        result.rows[kind] = {**evaluate(refs[kind]["model"], processor, benchmark, reference=reference, **common),
                             "wall_time_s": RowValues.of([refs[kind]["train_time_s"]])}
        bar.update(1)
    data = method_data(benchmark)
    for name in methods:
        bar.set_postfix_str(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model, seconds, note, steps = run_method(name, vanilla, processor, data, config,
                                                         **(method_overrides or {}).get(name, {}))
        except MethodUnavailableError as err:
            result.notes.append(f"{name}: skipped, its trainer is not importable ({err}).")
            log(f"[demo] skipping {name}: {err}")
            bar.update(1)
            continue
        if note:
            result.notes.append(f"seed {config.seed}: {note}")
        result.rows[name] = {**evaluate(model, processor, benchmark, reference=reference, **common),
                             "wall_time_s": RowValues.of([seconds]), "train_steps": RowValues.of([steps])}
        del model
        bar.update(1)
    bar.close()
    return result


def summarise_seeds(seed_results: Sequence[SeedResult], replicates: int = 2000) -> dict[str, Any]:
    """Means, intervals, paired differences and distances over the seeds (models present at every seed only)."""
    models = [m for m in seed_results[0].rows if all(m in r.rows for r in seed_results)]
    per_metric: dict[str, dict[str, list[RowValues]]] = {}
    for key in RESULT_KEYS:
        have = [m for m in models if all(key in r.rows[m] for r in seed_results)]
        if have:
            per_metric[key] = {m: [r.rows[m][key] for r in seed_results] for m in have}
    return summarise(per_metric, baselines=REFERENCE_MODELS, distance_metrics=DISTANCE_METRICS,
                     distance_target="oracle", replicates=replicates)


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured (the docs state it next to every table): ``provenance.environment()``."""
    return environment()


def tuning_provenance() -> dict[str, Any] | None:
    """Which tuning record the registry's defaults came from (its validation seeds, and those the relearning attack
    was calibrated on), or None if never tuned."""
    if not os.path.isfile(TUNED_FILE):
        return None
    with open(TUNED_FILE, encoding="utf-8") as f:
        record = json.load(f)
    return {"seeds": record.get("protocol", {}).get("seeds", []), "methods": sorted(record.get("methods", {})),
            "relearn_seeds": record.get("relearn", {}).get("seeds", []),
            "relearn_pick": record.get("relearn", {}).get("pick")}


def run_demo(
    config: DemoConfig | None = None,
    output_dir: str = "hf_unlearn_demo",
    methods: Sequence[str] | None = None,
    cache_dir: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Run the demo end to end at each seed of ``seeds`` (default: ``config.seed``); returns the content of
    ``results.json`` (also written to ``output_dir``)."""
    config = config or DemoConfig()
    methods = _check_methods(list(METHODS) if methods is None else methods)
    seeds = list(seeds) if seeds is not None else [config.seed]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct and non-empty, got {seeds}.")
    tuned_on = set((tuning_provenance() or {}).get("seeds", []))
    if tuned_on & set(seeds):
        warnings.warn(f"Seeds {sorted(tuned_on & set(seeds))} are the tuning protocol's validation seeds: the "
                      "defaults were chosen on them, so their numbers overstate how well the methods do.", stacklevel=2)
    total_start = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with deterministic():
        seed_results = [run_seed(replace(config, seed=s), methods, cache_dir, show_progress, log) for s in seeds]
    summary = summarise_seeds(seed_results)
    notes = list(dict.fromkeys(n for r in seed_results for n in r.notes))
    total = time.perf_counter() - total_start
    settings = {**config.settings(), "seeds": seeds, "hf_unlearn_version": library_version(), "methods": methods,
                "hyperparameters": {m: demo_hyperparameters(m) for m in methods},
                "tuning": tuning_provenance(),
                "cache_keys": {str(s): replace(config, seed=s).cache_key() for s in seeds}}
    settings.pop("seed")
    payload = {
        "benchmark": settings,
        "methods": {m: {k: summary["means"][m].get(k) for k in RESULT_KEYS} for m in summary["means"]},
        "intervals": summary["intervals"],
        "paired": summary["paired"],
        "distance": summary.get("distance", {}),
        "distance_paired": summary.get("distance_paired", {}),
        "per_seed": {str(r.seed): r.points() for r in seed_results},
        "num_questions": seed_results[0].num_questions,
        "notes": notes,
        "run": {"date": started, "wall_time_s": round(total, 1), "machine": machine_info(),
                "cached": {str(r.seed): r.cached for r in seed_results},
                "reference_epochs": {str(r.seed): r.epochs for r in seed_results}},
    }
    write_outputs(payload, output_dir)
    log(results_table(payload))
    for n in notes:
        log(f"* {n}")
    log(f"[demo] seeds {seeds}: total wall time {total:.1f} s; results in {os.path.abspath(output_dir)}")
    return payload


def write_outputs(payload: dict[str, Any], output_dir: str) -> None:
    """Write ``results.json``, ``report.md`` and ``tradeoff.png`` into ``output_dir`` (each atomically)."""
    os.makedirs(output_dir, exist_ok=True)
    write_text(os.path.join(output_dir, "results.json"), json.dumps(payload, indent=2) + "\n")
    b = payload["benchmark"].get("benchmark", {})
    shown = {k: b[k] for k in ("num_people", "num_holdout_people", "forget_ratio", "image_size") if k in b}
    shown["seeds"] = ",".join(str(s) for s in payload["benchmark"].get("seeds", []))
    run = payload.get("run", {})
    notes = [*payload.get("notes", []),
             f"Total wall time of this run: {run.get('wall_time_s')} s on {run.get('machine', {}).get('cpu_count')} "
             "CPUs (vanilla/oracle rows: their training time, possibly from an earlier run whose models were cached)."]
    write_text(os.path.join(output_dir, "report.md"),
               render_report(payload, settings=shown, notes=notes, title="hf_unlearn demo"))
    plot_tradeoff(payload["methods"], os.path.join(output_dir, "tradeoff.png"), intervals=payload.get("intervals"))
