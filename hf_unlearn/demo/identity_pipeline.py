"""Benchmark v3 end to end (issue 25): references trained to the criterion -> every method -> v3's metrics and
attacks -> validity checks -> means and 95% intervals over seeds.

Per seed: ``build_identity_references`` (cached), each method from the vanilla under the official protocol
(``identity.method_data``: forget-QA is never a retain loss) with the demo's recipe (``recipe.build_demo_trainer``),
``identity_evaluation.evaluate_identity_rows`` on vanilla, oracle and every method, and (``validity=True``) the
instrument's own validity checks (``identity_validity.validity_checks``), reported beside the table. Over seeds,
``stats.summarise`` gives the means, intervals, paired differences and the distance to the oracle on the trusted
metrics.

The methods run with the demo's recipe (``recipe.py``) and the tuning protocol's pick on v3 (``tuned_v3.json``,
``hf-unlearn tune --v3`` on the validation seeds); a method not yet tuned on v3 keeps its v2 pick (``tuned.json``),
and the payload says which pick each method ran with.
"""

from __future__ import annotations

import datetime
import functools
import multiprocessing
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
import torch

from ..data.identity_benchmark import IdentityBenchmarkConfig
from ..evaluation.attacks import RelearnConfig
from ..evaluation.stats import RowValues, summarise
from ..provenance import environment
from ..trainers.registry import METHODS, MethodUnavailableError
from .config import library_version
from .evaluation import reference_nll
from .identity import IdentityModelConfig, IdentityQuickConfig, build_identity_references, method_data
from .identity_evaluation import METRIC_KEYS, TRUSTED_DISTANCE_METRICS, evaluate_identity_rows, text_damage_ratio
from .identity_validity import validity_checks
from .pipeline import SeedResult, deterministic, run_method
from .recipe import demo_hyperparameters, v3_overrides, v3_pick
from .references import REFERENCE_MODELS

RESULT_KEYS = (*METRIC_KEYS, "wall_time_s", "train_steps")


def evaluation_subset(benchmark: datasets.DatasetDict, rows_per_split: int | None, seed: int) -> datasets.DatasetDict:
    """At most ``rows_per_split`` rows of each split, a seeded draw kept in split order (``None``: every row)."""
    if rows_per_split is None:
        return benchmark
    return datasets.DatasetDict({name: split.select(sorted(np.random.default_rng(seed).choice(
        len(split), size=rows_per_split, replace=False).tolist())) if len(split) > rows_per_split else split
        for name, split in benchmark.items()})


# A seed's units of work, each independent of the others once the references are trained: a worker process can run
# any of them (``run_identity_demo(workers=)``). Every unit seeds itself, so its numbers do not depend on which units
# ran before it in the same process.
REFERENCES_UNIT, VALIDITY_UNIT = "vanilla and oracle", "validity checks"


def seed_units(methods: Sequence[str], validity: bool) -> list[str]:
    """A seed's units, the longest first so that no worker is left with a long one at the end: the validity checks
    (GA and a vision-side update trained to the oracle), the two references' evaluations, then the methods by their
    step budget (every unit's evaluation costs the same)."""
    by_budget = sorted(methods, key=lambda m: -{**demo_hyperparameters(m), **v3_overrides(m)}.get("max_steps", 0))
    return [*([VALIDITY_UNIT] if validity else []), REFERENCES_UNIT, *by_budget]


@dataclass
class _Seed:
    """What every unit of a seed reads: the config, the references, the scored subset and the evaluation settings."""

    config: IdentityQuickConfig
    refs: Any
    bench: datasets.DatasetDict
    common: dict[str, Any]


def quick_config(seed: int, benchmark: Mapping[str, Any] | None = None) -> IdentityQuickConfig:
    """The quick configuration at ``seed``; ``benchmark``: a candidate design measured beside it, as fields of
    ``IdentityBenchmarkConfig`` that replace the quick configuration's (e.g. ``{"forget_ratio": 0.5}``) and, under
    ``"model"``, fields of ``IdentityModelConfig`` (e.g. ``{"num_pope": 100, "model": {"shapes_named": true}}``)."""
    config = IdentityQuickConfig(seed=seed)
    fields = dict(benchmark or {})
    model = fields.pop("model", None) or {}
    settable = set(asdict(config.benchmark)) - {"seed"}
    unknown = sorted(set(fields) - settable)
    if unknown:
        raise ValueError(f"Unknown or fixed benchmark field(s) {unknown}: use fields of IdentityBenchmarkConfig "
                         f"({sorted(settable)}) or 'model'; the seed comes from the run.")
    unknown = sorted(set(model) - set(asdict(config.model)))
    if unknown:
        raise ValueError(f"Unknown model field(s) {unknown}: use fields of IdentityModelConfig "
                         f"({sorted(asdict(config.model))}).")
    if fields:
        config.benchmark = IdentityBenchmarkConfig(**{**asdict(config.benchmark), **fields})
    if model:
        config.model = IdentityModelConfig(**{**asdict(config.model), **model})
    return config


def _seed(config: IdentityQuickConfig, cache_dir: str | None, log: Callable[[str], None],
          relearn: RelearnConfig | None, quantize: bool, rows_per_split: int | None) -> _Seed:
    seed = config.seed
    refs = build_identity_references(config, cache_dir, log)
    bench = evaluation_subset(refs.benchmark, rows_per_split, seed)
    common = dict(seed=seed, relearn=relearn, quantize=quantize,
                  reference=reference_nll(refs.oracle, refs.processor, bench))
    return _Seed(config, refs, bench, common)


def _run_unit(state: _Seed, unit: str, log: Callable[[str], None]) -> dict[str, Any]:
    """One unit's outcome: ``rows`` ({model: {metric: rows}}), ``notes`` and, for the validity unit, ``checks``."""
    refs, config = state.refs, state.config
    if unit == VALIDITY_UNIT:
        return {"rows": {}, "notes": [], "checks": validity_checks(refs, seed=config.seed)}
    if unit == REFERENCES_UNIT:
        return {"notes": [], "num_questions": {k: len(v) for k, v in state.bench.items()}, "rows": {kind: {
            **evaluate_identity_rows(model, refs.processor, state.bench, **state.common),
            "wall_time_s": RowValues.of([refs.info[kind]["train_time_s"] or 0.0])}
            for kind, model in (("vanilla", refs.vanilla), ("oracle", refs.oracle))}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model, seconds, note, steps = run_method(unit, refs.vanilla, refs.processor, method_data(refs.benchmark),
                                                     config, **v3_overrides(unit))
    except MethodUnavailableError as err:
        return {"rows": {}, "notes": [f"{unit}: skipped, its trainer is not importable ({err})."]}
    rows = {**evaluate_identity_rows(model, refs.processor, state.bench, **state.common),
            "wall_time_s": RowValues.of([seconds]), "train_steps": RowValues.of([steps])}
    log(f"[v3] seed {config.seed}: {unit} done ({seconds:.1f} s, {steps} steps)")
    return {"rows": {unit: rows}, "notes": [f"seed {config.seed}: {note}"] if note else []}


def _seed_result(seed: int, units: Sequence[str], outcomes: Sequence[dict[str, Any]],
                 info: dict[str, Any]) -> tuple[SeedResult, dict[str, Any] | None]:
    """The seed's ``SeedResult`` from its units' outcomes, vanilla and oracle first, then the methods in the order of
    ``units``. ``info``: the references' record (whether they came from the cache, their epochs)."""
    ordered = sorted(zip(units, outcomes), key=lambda pair: pair[0] != REFERENCES_UNIT)
    result = SeedResult(seed=seed, num_questions=ordered[0][1]["num_questions"],
                        cached={k: info[k]["cached"] for k in REFERENCE_MODELS},
                        epochs={k: info[k].get("epochs") for k in REFERENCE_MODELS})
    checks = None
    for _, outcome in ordered:
        result.rows.update(outcome["rows"])
        result.notes += outcome["notes"]
        checks = outcome.get("checks", checks)
    return result, checks


def run_identity_seed(config: IdentityQuickConfig, methods: Sequence[str], cache_dir: str | None = None,
                      log: Callable[[str], None] = print, relearn: RelearnConfig | None = None,
                      quantize: bool = True, validity: bool = True,
                      rows_per_split: int | None = None) -> tuple[SeedResult, dict[str, Any] | None]:
    """Vanilla, oracle and every method of ``methods`` at ``config.seed``, in this process; with ``validity``, the
    validity checks' record too. Methods train on the whole benchmark; ``rows_per_split`` evaluates a seeded subset
    of each split (a quick look: intervals then cover fewer questions)."""
    state = _seed(config, cache_dir, log, relearn, quantize, rows_per_split)
    units = [REFERENCES_UNIT, *methods, *([VALIDITY_UNIT] if validity else [])]
    return _seed_result(config.seed, units, [_run_unit(state, unit, log) for unit in units], state.refs.info)


def _run_seed_deterministically(seed: int, benchmark: Mapping[str, Any] | None = None,
                                **kwargs: Any) -> tuple[SeedResult, dict[str, Any] | None]:
    """One seed with deterministic kernels, in this process."""
    with deterministic():
        return run_identity_seed(quick_config(seed, benchmark), **kwargs)


def _references_in_worker(seed: int, cache_dir: str | None, log: Callable[[str], None],
                          benchmark: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train (or find) a seed's references in a worker, before any unit loads them; their record."""
    with deterministic():
        return build_identity_references(quick_config(seed, benchmark), cache_dir, log).info


_WORKER_SEED: dict[tuple, _Seed] = {}  # the seed a worker process read last; its next unit is mostly of the same seed


def _unit_in_worker(task: tuple[int, str], **kwargs: Any) -> dict[str, Any]:
    """One (seed, unit) in a worker process, with deterministic kernels (module level: the worker unpickles it)."""
    from transformers.utils import logging as transformers_logging

    seed, unit = task
    log, benchmark = kwargs.pop("log"), kwargs.pop("benchmark", None)
    # The references were built before: loading them again for every unit is worth no line and no progress bar.
    transformers_logging.disable_progress_bar()  # in this worker process only
    key = (seed, repr(benchmark), *sorted((k, repr(v)) for k, v in kwargs.items()))
    with deterministic():
        if key not in _WORKER_SEED:  # every unit copies the references before it changes anything
            _WORKER_SEED.clear()
            _WORKER_SEED[key] = _seed(quick_config(seed, benchmark), log=lambda *_: None, **kwargs)
        return _run_unit(_WORKER_SEED[key], unit, log)


def summarise_identity_seeds(seed_results: Sequence[SeedResult], replicates: int = 2000) -> dict[str, Any]:
    """Means, intervals, paired differences and the distance to the oracle on ``TRUSTED_DISTANCE_METRICS``."""
    models = [m for m in seed_results[0].rows if all(m in r.rows for r in seed_results)]
    per_metric = {key: {m: [r.rows[m][key] for r in seed_results] for m in models
                        if all(key in r.rows[m] for r in seed_results)} for key in RESULT_KEYS}
    per_metric = {k: v for k, v in per_metric.items() if v}
    return summarise(per_metric, baselines=REFERENCE_MODELS, distance_metrics=TRUSTED_DISTANCE_METRICS,
                     distance_target="oracle", replicates=replicates)


def run_identity_demo(seeds: Sequence[int], methods: Sequence[str] | None = None, cache_dir: str | None = None,
                      log: Callable[[str], None] = print, relearn: RelearnConfig | None = None,
                      quantize: bool = True, validity: bool = True,
                      rows_per_split: int | None = None, workers: int = 1,
                      benchmark: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Benchmark v3 at every seed of ``seeds``; returns the results payload (means, intervals, per-seed points,
    text-damage ratios, validity checks, provenance). ``workers`` > 1 runs the seeds' units (``seed_units``: the
    references' evaluation, each method, the validity checks) in that many processes (same numbers; ``log`` must
    then be picklable, e.g. ``print``). ``benchmark``: a candidate design's benchmark fields (``quick_config``); the
    payload's settings record them."""
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; registered methods: {sorted(METHODS)}.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    settings = dict(cache_dir=cache_dir, log=log, relearn=relearn, quantize=quantize, rows_per_split=rows_per_split,
                    benchmark=benchmark)
    threads = torch.get_num_threads()
    if workers == 1:
        outcomes = [_run_seed_deterministically(seed, methods=methods, validity=validity, **settings)
                    for seed in seeds]
    else:
        # Spawn, not fork: torch's thread pools do not survive a fork. Each seed's references first (trained once,
        # in parallel across seeds), then every (seed, unit) on whichever worker is free.
        units = seed_units(methods, validity)
        tasks = [(seed, unit) for seed in seeds for unit in units]
        # This process's torch threads, divided among the workers: more threads than cores made training steps 30-60
        # times slower here (docs/benchmark_v3.md); the CLI's default of 1 thread gives each worker 1.
        threads = max(1, threads // workers)
        with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            infos = list(pool.map(functools.partial(_references_in_worker, cache_dir=cache_dir, log=log,
                                                    benchmark=benchmark), dict.fromkeys(seeds)))
            done = list(pool.map(functools.partial(_unit_in_worker, **settings), tasks))
        info_of = dict(zip(dict.fromkeys(seeds), infos))
        outcomes = [_seed_result(seed, units, done[i * len(units):(i + 1) * len(units)], info_of[seed])
                    for i, seed in enumerate(seeds)]
    results = [result for result, _ in outcomes]
    checks = {str(seed): record for seed, (_, record) in zip(seeds, outcomes)}
    summary = summarise_identity_seeds(results)
    per_seed = {str(r.seed): r.points() for r in results}
    damage = {seed: {m: text_damage_ratio(p, points["vanilla"]) for m, p in points.items() if m != "vanilla"}
              for seed, points in per_seed.items()}
    return {
        "benchmark": {"name": "v3-quick", "seeds": list(seeds), "methods": methods,
                      "settings": quick_config(0, benchmark).settings(), "hf_unlearn_version": library_version(),
                      "hyperparameters": {m: {**demo_hyperparameters(m), **v3_overrides(m)} for m in methods},
                      "tuning": {m: "v3" if v3_pick(m) else "v2" for m in methods},
                      "relearn": None if relearn is None else relearn.to_dict(), "quantize": quantize,
                      "rows_per_split": rows_per_split},
        "methods": {m: {k: summary["means"][m].get(k) for k in RESULT_KEYS} for m in summary["means"]},
        "intervals": summary["intervals"],
        "paired": summary["paired"],
        "distance": summary.get("distance", {}),
        "distance_paired": summary.get("distance_paired", {}),
        "distance_metrics": list(TRUSTED_DISTANCE_METRICS),
        "text_damage_ratio": damage,
        "validity": checks,
        "per_seed": per_seed,
        "num_questions": results[0].num_questions,
        "notes": list(dict.fromkeys(n for r in results for n in r.notes)),
        "run": {"date": started, "wall_time_s": round(time.perf_counter() - start, 1), "workers": workers,
                "threads_per_process": threads,
                "machine": environment(),
                "cached": {str(r.seed): r.cached for r in results},
                "reference_epochs": {str(r.seed): r.epochs for r in results}},
    }
