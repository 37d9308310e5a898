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
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import datasets
import numpy as np
import torch

from ..evaluation.attacks import RelearnConfig
from ..evaluation.stats import RowValues, summarise
from ..provenance import environment
from ..trainers.registry import METHODS, MethodUnavailableError
from .config import library_version
from .evaluation import reference_nll
from .identity import IdentityQuickConfig, build_identity_references, method_data
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


def run_identity_seed(config: IdentityQuickConfig, methods: Sequence[str], cache_dir: str | None = None,
                      log: Callable[[str], None] = print, relearn: RelearnConfig | None = None,
                      quantize: bool = True, validity: bool = True,
                      rows_per_split: int | None = None) -> tuple[SeedResult, dict[str, Any] | None]:
    """Vanilla, oracle and every method of ``methods`` at ``config.seed``; with ``validity``, the validity checks'
    record too. Methods train on the whole benchmark; ``rows_per_split`` evaluates a seeded subset of each split (a
    quick look: intervals then cover fewer questions)."""
    refs = build_identity_references(config, cache_dir, log)
    processor = refs.processor
    bench = evaluation_subset(refs.benchmark, rows_per_split, config.seed)
    result = SeedResult(seed=config.seed, num_questions={k: len(v) for k, v in bench.items()},
                        cached={k: refs.info[k]["cached"] for k in REFERENCE_MODELS},
                        epochs={k: refs.info[k].get("epochs") for k in REFERENCE_MODELS})
    common = dict(seed=config.seed, relearn=relearn, quantize=quantize,
                  reference=reference_nll(refs.oracle, processor, bench))
    for kind, model in (("vanilla", refs.vanilla), ("oracle", refs.oracle)):
        result.rows[kind] = {**evaluate_identity_rows(model, processor, bench, **common),
                             "wall_time_s": RowValues.of([refs.info[kind]["train_time_s"] or 0.0])}
    data = method_data(refs.benchmark)
    for name in methods:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                model, seconds, note, steps = run_method(name, refs.vanilla, processor, data, config,
                                                         **v3_overrides(name))
        except MethodUnavailableError as err:
            result.notes.append(f"{name}: skipped, its trainer is not importable ({err}).")
            continue
        if note:
            result.notes.append(f"seed {config.seed}: {note}")
        result.rows[name] = {**evaluate_identity_rows(model, processor, bench, **common),
                             "wall_time_s": RowValues.of([seconds]), "train_steps": RowValues.of([steps])}
        log(f"[v3] seed {config.seed}: {name} done ({seconds:.1f} s, {steps} steps)")
        del model
    checks = validity_checks(refs, seed=config.seed) if validity else None
    return result, checks


def _run_seed_deterministically(seed: int, **kwargs: Any) -> tuple[SeedResult, dict[str, Any] | None]:
    """One seed with deterministic kernels (module level: a worker process unpickles it)."""
    with deterministic():
        return run_identity_seed(IdentityQuickConfig(seed=seed), **kwargs)


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
                      rows_per_split: int | None = None, workers: int = 1) -> dict[str, Any]:
    """Benchmark v3 at every seed of ``seeds``; returns the results payload (means, intervals, per-seed points,
    text-damage ratios, validity checks, provenance). ``workers`` > 1 runs that many seeds at once in their own
    processes (same numbers; ``log`` must then be picklable, e.g. ``print``)."""
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; registered methods: {sorted(METHODS)}.")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}.")
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    run_one = functools.partial(_run_seed_deterministically, methods=methods, cache_dir=cache_dir, log=log, relearn=relearn,
                                quantize=quantize, validity=validity, rows_per_split=rows_per_split)
    if workers == 1 or len(seeds) == 1:
        outcomes = [run_one(seed) for seed in seeds]
    else:
        # Seeds are independent (each seeds its own benchmark, references and methods), so a worker per core gives
        # the same numbers as one process; spawn, not fork: torch's thread pools do not survive a fork.
        with ProcessPoolExecutor(min(workers, len(seeds)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as pool:
            outcomes = list(pool.map(run_one, seeds))
    results = [result for result, _ in outcomes]
    checks = {str(seed): record for seed, (_, record) in zip(seeds, outcomes)}
    summary = summarise_identity_seeds(results)
    per_seed = {str(r.seed): r.points() for r in results}
    damage = {seed: {m: text_damage_ratio(p, points["vanilla"]) for m, p in points.items() if m != "vanilla"}
              for seed, points in per_seed.items()}
    return {
        "benchmark": {"name": "v3-quick", "seeds": list(seeds), "methods": methods,
                      "settings": IdentityQuickConfig().settings(), "hf_unlearn_version": library_version(),
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
                "machine": environment(),
                "cached": {str(r.seed): r.cached for r in results},
                "reference_epochs": {str(r.seed): r.epochs for r in results}},
    }
