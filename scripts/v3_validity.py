"""Benchmark v3's validity checks at many seeds, without the methods: the table of docs/benchmark_v3.md.

    python scripts/v3_validity.py --seeds 0,1,2,3,4,100,101,102,103 [--cache-dir DIR]
    python scripts/v3_validity.py --benchmark '{"forget_ratio": 0.5}' --output /tmp/candidate.json   # a candidate
    python scripts/v3_validity.py --benchmark '{"num_pope": 100, "model": {"shapes_named": true}}' --output ...

Runs ``run_identity_demo(seeds, methods=[])`` (references trained or loaded, vanilla and oracle evaluated without
the attacks, the four checks and the mediation measurement) and writes ``docs/results/v3_validity.json``;
``scripts/render_tables.py`` renders it into docs/benchmark_v3.md. ``--benchmark``: a candidate design (fields of
``IdentityBenchmarkConfig`` over the quick configuration's, ``IdentityModelConfig`` fields under ``"model"``), whose
run ``scripts/v3_configurations.py`` records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hf_unlearn.demo.identity_pipeline import run_identity_demo  # noqa: E402
from hf_unlearn.demo.tables import V3_VALIDITY_FILE  # noqa: E402
from hf_unlearn.utils import atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2,3,4,100,101,102,103")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--output", default=V3_VALIDITY_FILE)
    parser.add_argument("--benchmark", type=json.loads, default=None,
                        help='IdentityBenchmarkConfig fields as JSON, e.g. \'{"forget_ratio": 0.5}\'; '
                             'IdentityModelConfig fields under "model".')
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.benchmark and args.output == V3_VALIDITY_FILE:
        parser.error("--benchmark measures a candidate: write it elsewhere (--output), not over v3's validity file.")
    payload = run_identity_demo(seeds, methods=[], cache_dir=args.cache_dir, quantize=False, relearn=None,
                                workers=args.workers, benchmark=args.benchmark)
    atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n")
    print({seed: bool(record and record["passed"]) for seed, record in payload["validity"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
