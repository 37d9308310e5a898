"""The tuning protocol: how every method's demo hyperparameters are chosen, with the same budget for all of them.

1. **Seeds.** Validation seeds (``VALIDATION_SEEDS``) that the published tables never report: the people,
   portraits, initial weights and batch order of a validation seed are not those of any reported seed.
2. **Budget.** Every method gets ``GRID_SIZE`` grid points per seed, in two rounds of 12: learning rate x steps,
   plus the method's own main knob where it has one; round 2 extends round 1 past the edge its pick lay on
   (``TUNING_GRIDS``). On benchmark v3 round 2 is written by one rule from v3's own round-1 pick
   (``v3_round_two``), since v2's round 2 extends the wrong way there.
3. **Criterion.** At each seed a point is scored by its Euclidean distance to the oracle over forget-VQA, forget-QA,
   retain-VQA and general accuracy (``DISTANCE_METRICS``); the pick is the point with the lowest mean distance over
   the validation seeds (ties: the first point of the grid, which lists cheaper budgets first).
4. **Output.** ``hf_unlearn/demo/tuned.json`` records the grid, the seeds, every point's distances and the picks;
   the demo's recipe (``demo/recipe.py``) reads the picks as the demo's hyperparameters.

``hf-unlearn tune`` runs it. Only the four criterion metrics are evaluated, on every row of their splits.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import datasets
import numpy as np
import torch
from transformers import set_seed

from ..data.synthetic import build_synthetic_benchmark
from ..evaluation.evaluator import Evaluator
from ..evaluation.stats import distance
from ..trainers.registry import METHODS, MethodData, MethodUnavailableError
from ..utils import write_json_atomic
from .config import DemoConfig
from .identity import IdentityQuickConfig, build_identity_references
from .identity import method_data as identity_method_data
from .identity_evaluation import TRUSTED_DISTANCE_METRICS, evaluate_identity_rows
from .pipeline import DISTANCE_METRICS, deterministic, method_data, run_method
from .recipe import TUNED_FILE, TUNED_V3_FILE, untuned_overrides
from .references import load_or_train_reference_models

# Four validation seeds: picks made on two did not carry over (VKD's pick scored 0.153 on seeds 100/101, 0.239 on
# 100-103 and 0.31 on the reported seeds), and a relearning budget that spared vanilla at 2 seeds damaged it at 4 of
# the 5 reported ones (by up to 0.16). The methods are tuned and the attack calibrated on the same four.
VALIDATION_SEEDS = (100, 101, 102, 103)
GRID_SIZE = 24
_SPLIT_OF = {metric: metric[: -len("_acc")] for metric in DISTANCE_METRICS}

Grid = Mapping[str, Sequence[Any]]

# Each method: two rounds of 12 points (24 in all). Round 1 brackets the values that move the tiny demo models (lr x
# steps x the method's own main knob); every method's round-1 pick lay on an edge of its grid, so round 2 extends
# each grid past that edge (written once, from round 1's record, the same way for every method). The pick is the
# best of all 24 points.
TUNING_GRIDS: dict[str, list[dict[str, list[Any]]]] = {
    "ga": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [5, 10, 20, 40]},
           {"learning_rate": [2e-4, 3e-4, 5e-4], "max_steps": [40, 80, 120, 160]}],
    "ga_diff": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [10, 30], "retain_weight": [1.0, 5.0]},
                {"learning_rate": [1e-3, 2e-3], "max_steps": [30, 60], "retain_weight": [5.0, 10.0, 20.0]}],
    "kl_min": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [10, 30], "retain_weight": [1.0, 5.0]},
               {"learning_rate": [1e-3, 2e-3], "max_steps": [30, 60], "retain_weight": [5.0, 10.0, 20.0]}],
    "npo": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [15, 40], "beta": [0.1, 0.4]},
            {"learning_rate": [3e-4, 1e-3], "max_steps": [40, 80], "beta": [0.4, 1.0, 2.0]}],
    # MMUnlearner and VKD scale the learning rate of what they train (masked_lr_scale / vision_lr_scale = 10):
    # the effective vision-side rates are 3e-4 .. 3e-3. Their round 2 trades the mask threshold / forget term for
    # the weight of what keeps retain images intact (round 1 lost most on retain-VQA).
    "mmunlearner": [{"learning_rate": [3e-5, 1e-4, 3e-4], "max_steps": [30, 80], "mask_threshold": [0.5, 1.0]},
                    {"learning_rate": [1e-4, 3e-4], "max_steps": [80, 160], "retain_weight": [1.0, 3.0, 10.0]}],
    # VKD's round 1 compares its forget feature terms (the hinge, never picked before, gave way to "stranger");
    # round 2 extends past round 1's edges (lr 3e-4, 80 steps) and the last record's (feature_match_weight 100).
    "vkd": [{"learning_rate": [3e-5, 1e-4, 3e-4], "max_steps": [30, 80],
             "forget_feature_loss": ["random_target", "stranger"]},
            {"learning_rate": [3e-4, 6e-4], "max_steps": [120, 200], "feature_match_weight": [30.0, 100.0, 300.0]}],
    "simnpo": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [15, 40], "beta": [2.5, 4.5]},
               {"learning_rate": [1e-3, 2e-3], "max_steps": [40, 80], "beta": [1.0, 2.5, 4.5]}],
    "rmu": [{"learning_rate": [3e-4, 1e-3, 3e-3], "max_steps": [20, 50], "steering_coeff": [6.0, 12.0]},
            {"learning_rate": [3e-3, 1e-2], "max_steps": [20, 50], "steering_coeff": [12.0, 24.0, 48.0]}],
    "idkpo": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [15, 40], "beta": [0.1, 0.5]},
              {"learning_rate": [1e-3, 3e-3], "max_steps": [15, 40], "beta": [0.03, 0.1, 0.3]}],
    "undial": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [10, 30], "gamma": [3.0, 10.0]},
               {"learning_rate": [1e-3, 3e-3], "max_steps": [30, 60], "gamma": [10.0, 20.0, 40.0]}],
    # Issue 29's methods: round 2 written before any record, past round 1's largest rate and budget and over the
    # weight that trades forgetting for retain (the knob the other methods' round 2 found decisive).
    "wga": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [10, 30], "beta": [0.5, 1.0]},
            {"learning_rate": [1e-3, 3e-3], "max_steps": [30, 60], "retain_weight": [1.0, 5.0, 10.0]}],
    "satimp": [{"learning_rate": [5e-4, 2e-3, 5e-3], "max_steps": [10, 30], "beta1": [1.0, 5.0]},
               {"learning_rate": [5e-3, 1e-2], "max_steps": [30, 60], "forget_weight": [0.1, 0.3, 1.0]}],
    "ceu": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [10, 30], "retain_weight": [1.0, 5.0]},
            {"learning_rate": [1e-3, 3e-3], "max_steps": [30, 60], "retain_weight": [5.0, 10.0, 20.0]}],
    "pdu": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [10, 30], "dual_step_size": [0.1, 1.0]},
            {"learning_rate": [1e-3, 3e-3], "max_steps": [30, 60], "forget_weight": [0.01, 0.1, 1.0]}],
    "altpo": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [15, 40], "beta": [0.1, 0.5]},
              {"learning_rate": [1e-3, 3e-3], "max_steps": [15, 40], "beta": [0.03, 0.1, 0.3]}],
    # MANU trains nothing (no rate, no step budget): round 1 sweeps the pruned share with and without the firing-
    # frequency term, round 2 larger shares with the language model pruned in its last 3 layers, its last layer or not
    # at all (vision-only forgetting keeps the text answers: the demo's target).
    "manu": [{"prune_percent": [0.5, 1.0, 2.0, 3.0, 5.0, 10.0], "weight_freq": [0.0, 2.0]},
             {"prune_percent": [5.0, 10.0, 20.0, 30.0], "language_layers": [None, [-1], []]}],
    # MIP-Editor (unmeasured): round 1 the rate and budget against the path's width, round 2 past round 1's largest
    # rate and budget over the steering norm (RMU's round 2 knob; the tiny models' activation norm is about 1.5).
    "mip_editor": [{"learning_rate": [3e-3, 1e-2, 3e-2], "max_steps": [20, 40], "path_neurons": [5, 16]},
                   {"learning_rate": [1e-2, 3e-2], "max_steps": [40, 80], "steering_coeff": [6.5, 12.0, 24.0]}],
    # SMFA (unmeasured): round 1 the adapters' rate from the source's 1e-4 and budget with a tight and the source's
    # anchor, round 2 past round 1's largest rate and budget over the anchor (0: every conflicting entry dropped; 20:
    # almost none).
    "smfa": [{"learning_rate": [1e-4, 3e-4, 1e-3], "max_steps": [15, 40], "anchor_k": [1.0, 5.0]},
             {"learning_rate": [3e-3, 1e-2], "max_steps": [40, 80], "anchor_k": [0.0, 5.0, 20.0]}],
}


ROUND_SIZE = GRID_SIZE // 2


@dataclass(frozen=True)
class RoundRule:
    """A round written during tuning from round 1's grid and the pick so far (v3's round 2), of ``size`` points."""

    write: Callable[[Grid, Mapping[str, Any]], dict[str, list[Any]]]
    size: int = ROUND_SIZE

    def __call__(self, round_one: Grid, pick: Mapping[str, Any]) -> dict[str, list[Any]]:
        grid = self.write(round_one, pick)
        if len(grid_points(grid)) != self.size:
            raise ValueError(f"A round written from {dict(pick)} has {len(grid_points(grid))} points, not {self.size}.")
        return grid


def _scaled(value: float, factor: float) -> float:
    return float(f"{value * factor:.2g}")  # 3e-5 * 0.3 is 9e-6, not 8.999999999999999e-06


def v3_round_two(round_one: Grid, pick: Mapping[str, Any]) -> dict[str, list[Any]]:
    """v3's round 2, written from round 1's pick the same way for every method: three learning rates past the edge
    of round 1's rates the pick lay on (x0.1, x0.3, x1 at the lowest; x1, x3, x10 at the highest) or around it
    inside them (x0.5, x1, x2), times four step budgets (x0.5, x1, x1.5, x2 the picked one), the method's own knob
    held at its pick: 12 points."""
    rates = sorted(round_one["learning_rate"])
    rate, steps = pick["learning_rate"], pick["max_steps"]
    factors = (0.1, 0.3, 1.0) if rate == rates[0] else (1.0, 3.0, 10.0) if rate == rates[-1] else (0.5, 1.0, 2.0)
    knobs = {key: [pick[key]] for key in round_one if key not in ("learning_rate", "max_steps")}
    return {"learning_rate": [_scaled(rate, f) for f in factors],
            "max_steps": [max(1, round(steps * f)) for f in (0.5, 1.0, 1.5, 2.0)], **knobs}


def v3_grids() -> dict[str, list[Grid | RoundRule]]:
    """The grids on benchmark v3: v2's round 1, then ``v3_round_two``; MANU (no rate or step budget to extend)
    keeps v2's round 2."""
    return {name: [rounds[0], RoundRule(v3_round_two) if "learning_rate" in rounds[0] else rounds[1]]
            for name, rounds in TUNING_GRIDS.items()}


def grid_points(grid: Grid | Sequence[Grid]) -> list[dict[str, Any]]:
    """Every combination of a grid, cheapest step budgets first (the order ties are broken in); for a list of
    rounds, the points of each round in turn (a point in two rounds counts twice; ``tune`` scores it once)."""
    if not isinstance(grid, Mapping):
        return [point for round_grid in grid for point in grid_points(round_grid)]
    keys = sorted(grid, key=lambda k: (k != "max_steps", k != "learning_rate", k))
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def grid_rounds(grid: Grid | Sequence[Grid]) -> list[dict[str, list[Any]]]:
    """A grid as its list of rounds (JSON-ready)."""
    rounds = [grid] if isinstance(grid, Mapping) else list(grid)
    return [{k: list(v) for k, v in r.items()} for r in rounds]


def _round_list(grid: Grid | Sequence[Grid | RoundRule]) -> list[Grid | RoundRule]:
    return [grid] if isinstance(grid, Mapping) else list(grid)


def _budget(grid: Grid | Sequence[Grid | RoundRule]) -> int:
    """Points of a grid; a round still to be written by its rule counts the size the rule promises."""
    return sum(r.size if isinstance(r, RoundRule) else len(grid_points(r)) for r in _round_list(grid))


def check_grids(grids: Mapping[str, Grid | Sequence[Grid | RoundRule]], size: int = GRID_SIZE) -> None:
    """Every method must get the same budget: ``size`` points; a rule writes a later round, never the first."""
    ruled_first = [m for m, g in grids.items() if isinstance(_round_list(g)[0], RoundRule)]
    if ruled_first:
        raise ValueError(f"A round rule needs round 1 to write from; {ruled_first} start with one.")
    wrong = {m: _budget(g) for m, g in grids.items() if _budget(g) != size}
    if wrong:
        raise ValueError(f"Every tuning grid must have {size} points (same budget for every method); got {wrong}.")


def select(points: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Mapping[str, float]]],
           oracle: Mapping[str, Mapping[str, float]], metrics: Sequence[str] = DISTANCE_METRICS) -> dict[str, Any]:
    """The protocol's pick: the point with the lowest mean (over seeds) distance to the oracle.

    Args:
        points: the grid points, in grid order.
        scores: per point, ``{seed: {metric: value}}``.
        oracle: ``{seed: {metric: value}}`` of the oracle at the same seeds.
    Returns ``{"index", "hyperparameters", "distance", "distances"}`` (``distances``: every point's mean distance).
    """
    if not points or len(points) != len(scores):
        raise ValueError(f"{len(points)} points but {len(scores)} scores.")
    means = []
    for per_seed in scores:
        if set(per_seed) != set(oracle):
            raise ValueError(f"Scores cover seeds {sorted(per_seed)}, the oracle {sorted(oracle)}.")
        means.append(float(np.mean([distance(per_seed[s], oracle[s], metrics) for s in per_seed])))
    best = int(np.argmin(means))  # first minimum: the cheapest of equally good points
    return {"index": best, "hyperparameters": dict(points[best]), "distance": means[best], "distances": means}


def criterion_point(model, processor, benchmark, batch_size: int = 16) -> dict[str, float]:
    """The four criterion metrics of one model (multiple-choice accuracy on their whole splits)."""
    evaluator = Evaluator(model, processor, benchmark, batch_size=batch_size)
    return {metric: evaluator.mcq_accuracy(split) for metric, split in _SPLIT_OF.items()}


@dataclass
class TuningSeed:
    """What one validation seed gives the protocol: the model every grid point starts from, the methods' data, the
    oracle's criterion point and how a model is scored (the instrument's criterion metrics)."""

    config: Any  # what ``run_method`` trains with (its ``seed``)
    vanilla: torch.nn.Module
    processor: Any
    data: MethodData
    oracle: dict[str, float]
    score: Callable[[torch.nn.Module], dict[str, float]]


def v2_seed(seed: int, config: DemoConfig, cache_dir: str | None, show_progress: bool,
            log: Callable[[str], None]) -> TuningSeed:
    """Benchmark v2's synthetic demo at ``seed``: scored by 4-way accuracy (``DISTANCE_METRICS``)."""
    seed_config = replace(config, seed=seed)
    set_seed(seed)
    benchmark = build_synthetic_benchmark(seed_config.benchmark)
    refs = load_or_train_reference_models(benchmark, seed_config, cache_dir, show_progress, log)
    processor = refs["vanilla"]["processor"]

    def score(model):
        return criterion_point(model, processor, benchmark, config.eval_batch_size)

    return TuningSeed(seed_config, refs["vanilla"]["model"], processor, method_data(benchmark),
                      score(refs["oracle"]["model"]), score)


def v3_seed(seed: int, cache_dir: str | None, log: Callable[[str], None]) -> TuningSeed:
    """Benchmark v3's identity demo at ``seed`` under the official protocol: scored by the trusted metrics
    (``TRUSTED_DISTANCE_METRICS``: truth ratio and ROUGE-L) on their four splits, every row; no attack."""
    config = IdentityQuickConfig(seed=seed)
    refs = build_identity_references(config, cache_dir, log)
    splits = sorted({metric.rsplit("_", 1)[0] for metric in TRUSTED_DISTANCE_METRICS})
    criterion_splits = datasets.DatasetDict({split: refs.benchmark[split] for split in splits})

    def score(model):
        rows = evaluate_identity_rows(model, refs.processor, criterion_splits, seed=seed, quantize=False)
        return {metric: rows[metric].point() for metric in TRUSTED_DISTANCE_METRICS}

    return TuningSeed(config, refs.vanilla, refs.processor, identity_method_data(refs.benchmark),
                      score(refs.oracle), score)


def tune(
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = VALIDATION_SEEDS,
    config: DemoConfig | None = None,
    grids: Mapping[str, Grid | Sequence[Grid | RoundRule]] | None = None,
    cache_dir: str | None = None,
    output: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    v3: bool = False,
    reuse_scores: bool = False,
) -> dict[str, Any]:
    """Run the protocol; write (and return) the record of ``tuned.json`` (``v3``: on benchmark v3, with
    ``v3_grids``, into ``tuned_v3.json``; ``config`` is v2's).

    Rounds run in turn over every seed, so a round written by a rule sees the scores of the rounds before it.
    ``reuse_scores``: a point the record at ``output`` already scored under the same protocol is not re-run (valid
    only while the methods' code is unchanged since that record)."""
    config = config or DemoConfig()
    output = output if output is not None else (TUNED_V3_FILE if v3 else TUNED_FILE)
    grids = dict((v3_grids() if v3 else TUNING_GRIDS) if grids is None else grids)
    methods = list(methods or [m for m in grids if m in METHODS])
    missing = [m for m in methods if m not in grids or m not in METHODS]
    if missing:
        raise ValueError(f"No tuning grid or registry entry for {missing}; grids: {sorted(grids)}, "
                         f"registered: {sorted(METHODS)}.")
    grid_size = _budget(grids[methods[0]])
    check_grids({m: grids[m] for m in methods}, size=grid_size)
    metrics = TRUSTED_DISTANCE_METRICS if v3 else DISTANCE_METRICS
    benchmark = _v3_settings() if v3 else config.settings()["benchmark"]
    protocol = {"seeds": list(seeds), "metrics": list(metrics), "grid_size": grid_size,
                "criterion": "mean over seeds of the Euclidean distance to the oracle", "benchmark": benchmark}
    known = _recorded_scores(output, protocol) if reuse_scores else {}
    if reuse_scores:  # say it when nothing can be reused, rather than silently re-running everything
        log(f"[tune] reusing {len(known.get('points', {}))} scored points of {output}" if known else
            f"[tune] --reuse-scores: {output} holds no record under this protocol; every point runs")
    start = time.perf_counter()
    oracle: dict[str, dict[str, float]] = dict(known.get("oracle", {}))
    plans = {m: _round_list(grids[m]) for m in methods}
    rounds: dict[str, list[dict[str, list[Any]]]] = {m: [] for m in methods}  # the rounds as run
    points: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    scores: dict[str, list[dict[str, dict[str, float]]]] = {m: [] for m in methods}
    unavailable: dict[str, str] = {}
    reused = 0

    def score_round(todo: Mapping[str, Sequence[int]], index: int) -> None:
        """Score the points ``todo`` names (per method, indices into ``points``) at every seed where they lack a
        score, each from the untuned entry: v2's recorded pick is undone (v3's is never read while tuning)."""
        from tqdm.auto import tqdm

        with deterministic():
            for seed in seeds:
                key = str(seed)
                missing = {m: [i for i in todo[m] if key not in scores[m][i]] for m in todo if m not in unavailable}
                if not any(missing.values()) and key in oracle:
                    continue
                setting = v3_seed(seed, cache_dir, log) if v3 else v2_seed(seed, config, cache_dir, show_progress, log)
                oracle[key] = setting.oracle
                for name, indices in missing.items():
                    neutral = untuned_overrides(name)
                    for i in tqdm(indices, desc=f"tune {name} round {index + 1} seed {seed}",
                                  disable=not show_progress):
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore", UserWarning)
                                model, *_ = run_method(name, setting.vanilla, setting.processor, setting.data,
                                                       setting.config, **{**neutral, **points[name][i]})
                        except MethodUnavailableError as err:
                            unavailable[name] = str(err)
                            break
                        scores[name][i][key] = setting.score(model)
                        del model

    for index in range(max(len(plan) for plan in plans.values())):
        todo = {}
        for name in methods:
            if name in unavailable or index >= len(plans[name]):
                continue
            grid = plans[name][index]
            if isinstance(grid, RoundRule):
                grid = grid(rounds[name][0], select(points[name], scores[name], oracle, metrics)["hyperparameters"])
            rounds[name].append(grid_rounds(grid)[0])
            for point in grid_points(grid):
                # A point scored before (an earlier round, or the record) is not run again: training is deterministic.
                earlier = [scores[name][i] for i, p in enumerate(points[name]) if p == point]
                recorded = known.get("points", {}).get(_point_key(name, point), {})
                points[name].append(point)
                scores[name].append(dict(earlier[0] if earlier else recorded))
                reused += len(scores[name][-1])
                todo.setdefault(name, []).append(len(points[name]) - 1)
        score_round(todo, index)
    record: dict[str, Any] = {
        "protocol": {**protocol, "wall_time_s": round(time.perf_counter() - start), "reused_runs": reused},
        "oracle": oracle,
        "methods": {},
        "unavailable": unavailable,
    }
    for name in methods:
        if name in unavailable:
            continue
        pick = select(points[name], scores[name], oracle, metrics)
        record["methods"][name] = {
            "grid": rounds[name], "picked": pick["hyperparameters"],
            "distance": pick["distance"],
            "points": [{"hyperparameters": p, "distance": d, "per_seed": s}
                       for p, d, s in zip(points[name], pick["distances"], scores[name])],
        }
        log(f"[tune] {name}: {pick['hyperparameters']} (mean distance to the oracle {pick['distance']:.3f})")
    if output:
        write_json_atomic(output, merged_record(record, output))
    return record


def _point_key(name: str, point: Mapping[str, Any]) -> str:
    return json.dumps([name, point], sort_keys=True)


def _recorded_scores(path: str, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The oracle and every point's scores of the record at ``path`` if it ran under ``protocol``; else empty."""
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if not _same_protocol(record.get("protocol", {}), protocol):
        return {}
    return {"oracle": record.get("oracle", {}),
            "points": {_point_key(name, p["hyperparameters"]): p["per_seed"]
                       for name, entry in record.get("methods", {}).items() for p in entry.get("points", [])}}


def _same_protocol(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("seeds", "benchmark", "grid_size", "metrics")
    # Compared as JSON: a record read back has lists where the settings have tuples.
    return json.dumps({k: a.get(k) for k in keys}, sort_keys=True) == json.dumps({k: b.get(k) for k in keys},
                                                                                   sort_keys=True)


def merged_record(record: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``record`` with the picks already in ``path`` of methods it did not tune, under the same protocol (seeds,
    benchmark, grid size, metrics), and the relearning attack's calibration kept."""
    out = dict(record)
    if not os.path.isfile(path):
        return out
    with open(path, encoding="utf-8") as f:
        previous = json.load(f)
    if _same_protocol(previous.get("protocol", {}), record["protocol"]):
        out["methods"] = {**previous.get("methods", {}), **record["methods"]}
        # Each run that went into the record, and their total time.
        runs = previous["protocol"].get("runs") or [_run_entry(previous)]
        runs = [*runs, _run_entry(record)]
        out["protocol"] = {**record["protocol"], "runs": runs, "wall_time_s": sum(r["wall_time_s"] for r in runs)}
    if "relearn" in previous:
        out["relearn"] = previous["relearn"]
    return out


def _run_entry(record: Mapping[str, Any]) -> dict[str, Any]:
    protocol = record["protocol"]
    return {"methods": sorted(record.get("methods", {})), "wall_time_s": protocol.get("wall_time_s", 0),
            "reused_runs": protocol.get("reused_runs", 0)}


def _v3_settings() -> dict[str, Any]:
    """v3's settings at every seed (the seed itself left out)."""
    settings = IdentityQuickConfig().settings()
    settings.pop("seed")
    settings["benchmark"].pop("seed")
    return settings


def calibrate(
    seeds: Sequence[int] = VALIDATION_SEEDS,
    config: DemoConfig | None = None,
    cache_dir: str | None = None,
    output: str | None = TUNED_FILE,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    v3: bool = False,
    budgets: Sequence[tuple[float, int]] | None = None,
) -> dict[str, Any]:
    """Calibrate the relearning attack's budget on the validation seeds (never reported; ``demo/calibration.py``);
    the record goes under ``"relearn"`` in the tuning record (``tuned.json``, or ``tuned_v3.json`` with ``v3``) next
    to the method picks. On v3 the attack trains what v3's own attack trains (language model and projector), and the
    pick asks only that the vanilla lose nothing where it knew every test row (``calibration.pick_budget``)."""
    from ..evaluation.attacks import RelearnConfig
    from .calibration import CANDIDATE_BUDGETS, V3_CANDIDATE_BUDGETS, calibrate_relearn
    from .identity import relearned_parts

    config = config or DemoConfig()
    refs_by_seed = {}
    with deterministic():
        for seed in seeds:
            if v3:
                refs = build_identity_references(IdentityQuickConfig(seed=seed), cache_dir, log)
                refs_by_seed[seed] = ({"vanilla": refs.vanilla, "oracle": refs.oracle}, refs.processor, refs.benchmark)
                continue
            seed_config = replace(config, seed=seed)
            benchmark = build_synthetic_benchmark(seed_config.benchmark)
            refs = load_or_train_reference_models(benchmark, seed_config, cache_dir, show_progress, log)
            refs_by_seed[seed] = ({k: refs[k]["model"] for k in ("vanilla", "oracle")}, refs["vanilla"]["processor"],
                                  benchmark)
        record = calibrate_relearn(
            refs_by_seed, budgets=budgets or (V3_CANDIDATE_BUDGETS if v3 else CANDIDATE_BUDGETS),
            base=RelearnConfig() if v3 else config.relearn,
            select_parameters=relearned_parts if v3 else None,
            # On v3 the oracle knows the forget people from text, so relearning a face is one association for it as
            # for the identity-swap model: exposure cannot be asked for there (docs/benchmark_v3.md, the table).
            require_exposure=not v3, sure_seeds_only=v3)
    record["seeds"] = list(seeds)
    log(f"[tune] relearning attack: pick {record['pick']}")
    if output:
        previous = {}
        if os.path.isfile(output):
            with open(output, encoding="utf-8") as f:
                previous = json.load(f)
        write_json_atomic(output, {**previous, "relearn": record})
    return record
