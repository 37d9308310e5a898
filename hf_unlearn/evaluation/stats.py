"""Statistics over seeds and questions: hierarchical bootstrap intervals, paired differences, distances.

A benchmark run gives, per seed, per model and per metric, the *rows* behind the number: one value per question for
accuracies and ROUGE-L (their mean is the metric), or member and non-member scores for a membership-inference AUC.
One seed is one draw of people, portraits, initial weights and batch order; one question is one draw from a person's
facts. A 95% interval has to cover both, so the bootstrap is two-stage: each replicate resamples the seeds with
replacement, then the questions of every drawn seed, and averages the per-seed metric over the drawn seeds.

Models evaluated on the same rows of a seed share the same resampled rows (the draw depends only on the seed, the
metric and the replicate), so a difference between two models is a *paired* difference and its interval is much
tighter than the two separate intervals suggest.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_REPLICATES = 2000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class RowValues:
    """The rows behind one metric of one model at one seed.

    ``values`` holds one number per question (the metric is their mean), or the member scores of an AUC metric
    whose non-member scores are ``negatives`` (the metric is P(member score > non-member score), ties counted 1/2).
    A metric measured once per seed (a wall time) is a single value.
    """

    values: np.ndarray
    negatives: np.ndarray | None = None

    @classmethod
    def of(cls, values: Sequence[float], negatives: Sequence[float] | None = None) -> RowValues:
        neg = None if negatives is None else np.asarray(negatives, dtype=np.float64)
        return cls(np.asarray(values, dtype=np.float64), neg)

    @property
    def is_auc(self) -> bool:
        return self.negatives is not None

    def point(self) -> float:
        """The metric on these rows: their mean, or the AUC."""
        if self.is_auc:
            return float(_comparison_matrix(self.values, self.negatives).mean())
        return float(self.values.mean())

    def to_dict(self) -> dict[str, list[float]]:
        out = {"values": self.values.tolist()}
        if self.negatives is not None:
            out["negatives"] = self.negatives.tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[float]]) -> RowValues:
        return cls.of(data["values"], data.get("negatives"))


def _comparison_matrix(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """(P, N) matrix: 1 where a member outscores a non-member, 0.5 on ties, 0 otherwise."""
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def _resampled_statistics(rows: Sequence[RowValues], draws: int, rng: np.random.Generator) -> np.ndarray:
    """(len(rows), draws) statistics of each model's rows under the SAME ``draws`` row resamples (paired)."""
    first = rows[0]
    shapes = {(len(r.values), None if r.negatives is None else len(r.negatives)) for r in rows}
    if len(shapes) != 1:
        raise ValueError(f"Paired rows must have the same sizes across models, got {sorted(shapes, key=str)}.")
    n = len(first.values)
    if not first.is_auc:
        if n == 1:  # a per-seed scalar: nothing to resample within the seed
            return np.stack([np.repeat(r.values[0], draws) for r in rows])
        idx = rng.integers(n, size=(draws, n), dtype=np.int32)
        return np.stack([r.values[idx].mean(axis=1) for r in rows])
    m = len(first.negatives)
    # Resampling with replacement = multinomial weights per row; AUC of the reweighted rows = w_pos C w_neg / (n m).
    w_pos = rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)  # (draws, n)
    w_neg = rng.multinomial(m, np.full(m, 1.0 / m), size=draws).astype(np.float64)  # (draws, m)
    out = []
    for r in rows:
        c = _comparison_matrix(r.values, r.negatives)  # (n, m)
        out.append(((w_pos @ c) * w_neg).sum(axis=1) / (n * m))
    return np.stack(out)


def hierarchical_bootstrap(
    per_seed: Mapping[str, Mapping[str, Sequence[RowValues]]],
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Bootstrap replicates of every model's seed-averaged metric, paired across models.

    Args:
        per_seed: ``{metric: {model: [RowValues of seed 0, seed 1, ...]}}``; every model of a metric must have the
            same seeds (in the same order) and the same row counts per seed.
        replicates: number of bootstrap replicates.
        seed: seed of the resampling (results are reproducible).

    Returns ``{metric: {model: (replicates,) array}}``. Within a replicate, the same seeds are drawn for every
    metric and model, and the same rows for every model of a metric.
    """
    num_seeds = {len(v) for models in per_seed.values() for v in models.values()}
    if len(num_seeds) != 1:
        raise ValueError(f"Every metric and model needs the same number of seeds, got {sorted(num_seeds)}.")
    s = num_seeds.pop()
    if s == 0:
        raise ValueError("No seeds to bootstrap over.")
    rng = np.random.default_rng([seed, 0])
    chosen = rng.integers(s, size=(replicates, s))  # (B, S): seed drawn in each slot of each replicate
    out: dict[str, dict[str, np.ndarray]] = {}
    for metric, models in per_seed.items():
        names = list(models)
        # stats[j, i, b*s + k]: model j's metric on seed i's rows under draw (b, k)
        stats = np.stack([
            _resampled_statistics([models[name][i] for name in names], replicates * s,
                                  np.random.default_rng([seed, zlib.crc32(metric.encode()), i]))
            for i in range(s)
        ], axis=1).reshape(len(names), s, replicates, s)
        b_idx, k_idx = np.meshgrid(np.arange(replicates), np.arange(s), indexing="ij")
        picked = stats[:, chosen, b_idx, k_idx]  # (models, B, S)
        out[metric] = {name: picked[j].mean(axis=1) for j, name in enumerate(names)}
    return out


def interval(replicates: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates."""
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def point_estimate(rows: Sequence[RowValues]) -> float:
    """The metric averaged over seeds (each seed's metric on all of its rows)."""
    return float(np.mean([r.point() for r in rows]))


def distance(points: Mapping[str, float | np.ndarray], target: Mapping[str, float | np.ndarray],
             metrics: Sequence[str]) -> float | np.ndarray:
    """Euclidean distance between two points over ``metrics`` (works on scalars or on replicate arrays)."""
    return np.sqrt(sum((np.asarray(points[m]) - np.asarray(target[m])) ** 2 for m in metrics))


def summarise(
    per_seed: Mapping[str, Mapping[str, Sequence[RowValues]]],
    baselines: Sequence[str] = ("vanilla", "oracle"),
    distance_metrics: Sequence[str] = (),
    distance_target: str = "oracle",
    replicates: int = DEFAULT_REPLICATES,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, dict]:
    """Means, intervals and paired differences for a multi-seed run.

    Returns a dict with
      * ``means``: ``{model: {metric: mean over seeds}}``
      * ``intervals``: ``{model: {metric: [low, high]}}`` (hierarchical bootstrap)
      * ``paired``: ``{model: {baseline: {metric: {"diff": d, "interval": [low, high]}}}}``, model minus baseline
      * ``distance``: ``{model: {"value": d, "interval": [low, high]}}`` to ``distance_target`` over
        ``distance_metrics`` (if given and all present), and ``distance_paired``: ``{model: {other: {"diff": ...,
        "interval": ...}}}``, model's distance minus other's (negative = model is closer).
    """
    reps = hierarchical_bootstrap(per_seed, replicates=replicates, seed=seed)
    models = list(dict.fromkeys(name for ms in per_seed.values() for name in ms))
    means = {m: {k: point_estimate(v[m]) for k, v in per_seed.items() if m in v} for m in models}
    intervals = {m: {k: list(interval(r[m], level)) for k, r in reps.items() if m in r} for m in models}
    paired: dict[str, dict] = {}
    for m in models:
        for base in baselines:
            if base == m:
                continue
            diffs = {}
            for k, r in reps.items():
                if m in r and base in r:
                    diffs[k] = {"diff": means[m][k] - means[base][k], "interval": list(interval(r[m] - r[base], level))}
            if diffs:
                paired.setdefault(m, {})[base] = diffs
    out: dict[str, dict] = {"means": means, "intervals": intervals, "paired": paired}
    usable = [m for m in models if all(k in reps and m in reps[k] and distance_target in reps[k]
                                       for k in distance_metrics)]
    if distance_metrics and distance_target in usable:
        target_pt = means[distance_target]
        target_rep = {k: reps[k][distance_target] for k in distance_metrics}
        rep_dist = {m: distance({k: reps[k][m] for k in distance_metrics}, target_rep, distance_metrics)
                    for m in usable}
        out["distance"] = {m: {"value": float(distance(means[m], target_pt, distance_metrics)),
                               "interval": list(interval(rep_dist[m], level))} for m in usable}
        out["distance_paired"] = {
            m: {o: {"diff": out["distance"][m]["value"] - out["distance"][o]["value"],
                    "interval": list(interval(rep_dist[m] - rep_dist[o], level))}
                for o in usable if o not in (m, distance_target)}
            for m in usable if m != distance_target
        }
    return out

