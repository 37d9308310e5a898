"""Does a run reproduce the published one? A run's seeds set against the published run's seeds.

On the machine that published, a seed gives the published per-seed values exactly (deterministic kernels, one
thread). Elsewhere the CPU kernels round differently and a seed's numbers move (docs/benchmark.md, "Reproducing
it"): what should hold is that they stay inside the published seed-to-seed spread (the lowest to the highest value
over the published seeds). The 95% interval of the published *mean* is counted too, but one seed is not expected
inside it: it is narrower than the spread of single seeds (on the published run, about a third of each seed's own
cells lie outside it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .identity_report import COLUMNS


def compare_to_published(run: Mapping[str, Any], published: Mapping[str, Any],
                         keys: Sequence[str] | None = None) -> dict[str, Any]:
    """For every seed of ``run`` that ``published`` reports, every model in both and every metric of ``keys``
    (default: the published table's columns) that both hold: is the run's value the published seed's, inside the
    published seed-to-seed spread, inside the published mean's 95% interval? Returns the counts and the cells outside
    the spread."""
    keys = list(keys or [k for k, _, _ in COLUMNS])
    counts = {"cells": 0, "equal": 0, "inside_spread": 0, "inside_interval": 0}
    outside: list[dict[str, Any]] = []
    for seed, models in run["per_seed"].items():
        if seed not in published["per_seed"]:
            continue
        for model, values in models.items():
            for key in keys:
                spread = [p[model][key] for p in published["per_seed"].values() if key in p.get(model, {})]
                interval = published["intervals"].get(model, {}).get(key)
                if key not in values or not spread or interval is None:
                    continue
                value = values[key]
                counts["cells"] += 1
                counts["equal"] += value == published["per_seed"][seed][model][key]
                counts["inside_interval"] += interval[0] <= value <= interval[1]
                if min(spread) <= value <= max(spread):
                    counts["inside_spread"] += 1
                else:
                    outside.append({"seed": seed, "model": model, "metric": key, "value": value,
                                    "published_seed": published["per_seed"][seed][model][key],
                                    "spread": [min(spread), max(spread)]})
    return {**counts, "outside_spread": outside}
