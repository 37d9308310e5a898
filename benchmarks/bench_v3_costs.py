"""Benchmark v3's costs against issue 25's goals (2 cores, quiet): one seed cold (references trained) <= 10 min, the
same seed with the references cached <= 3 min, ``--quick`` <= 2 min.

Each step is the user's command, ``hf-unlearn demo --v3``, run as a subprocess with a cache of its own (so "cold"
is cold), its wall time and the 1-minute load average before and after recorded. Absolute seconds, not a ratio: the
goals are absolute. A step whose load exceeded ``common.LOAD_RULE`` is marked "under load" (not a verdict).

    python benchmarks/bench_v3_costs.py                       # every registered method, seed 0
    python benchmarks/bench_v3_costs.py --workers 2                           # the demo's --workers 2
    python benchmarks/bench_v3_costs.py --methods ga,mmunlearner,vkd --out /tmp/v3_costs.json

Results: JSON (``--out``, default ``docs/results/v3_costs.json``) with the environment (versions, CPU flags);
``scripts/render_tables.py`` renders it into docs/benchmark_v3.md (``identity_report.costs_block``), as printed here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hf_unlearn.demo.identity_report import costs_block
from hf_unlearn.provenance import environment
from hf_unlearn.utils import atomic_write_text

from common import LOAD_RULE, load_average, load_limit

# (name, the flags after `hf-unlearn demo --v3 --seeds SEED`, goal in seconds), in order: the first step trains the
# references into an empty cache, the later ones load them from it.
STEPS = (
    ("one seed, cold (references trained)", [], 600),
    ("one seed, references cached", [], 180),
    ("--quick, references cached", ["--quick"], 120),
)


def run_step(flags: list[str], cache: str, out: str, seed: int, methods: str | None, workers: int) -> dict:
    command = [sys.executable, "-m", "hf_unlearn.cli", "demo", "--v3", "--seeds", str(seed), "--cache-dir", cache,
               "--output", out, "--workers", str(workers), *flags, *(["--methods", methods] if methods else [])]
    before, start = load_average(), time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds, after = time.perf_counter() - start, load_average()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {"seconds": round(seconds, 1), "load": [round(before, 2), round(after, 2)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=None, help="Comma-separated methods (default: every registered one).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1,
                        help="The demo's --workers (2 on 2 cores: its methods and checks shared out between two "
                             "processes).")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "results" /
                                             "v3_costs.json"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the measured command runs torch on one thread: the load limit is for one
    limit = load_limit(args.workers)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf_unlearn_v3_costs_") as work:
        cache = os.path.join(work, "cache")
        for i, (name, flags, goal) in enumerate(STEPS):
            result = run_step(flags, cache, os.path.join(work, f"out{i}"), args.seed, args.methods, args.workers)
            under_load = max(result["load"]) > limit
            rows.append({"step": name, "goal_s": goal, **result, "under_load": under_load,
                         "meets_goal": None if under_load else result["seconds"] <= goal})
            print(f"[v3 costs] {name}: {result['seconds']} s (goal {goal} s), load {result['load']}", flush=True)
    env = environment()
    payload = {"methods": args.methods or "all registered", "seed": args.seed, "workers": args.workers,
               "load_rule": LOAD_RULE,
               "load_limit": limit, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": env, "steps": rows}
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print("\n" + costs_block(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
