"""Benchmark v3's validity checks at many seeds, without the methods: the table of docs/benchmark_v3.md.

    python scripts/v3_validity.py --seeds 0,1,2,3,4,100,101,102,103 [--cache-dir DIR]

Runs ``run_identity_demo(seeds, methods=[])`` (references trained or loaded, vanilla and oracle evaluated without
the attacks, the four checks and the mediation measurement) and writes ``docs/results/v3_validity.json``;
``scripts/render_tables.py`` renders it into docs/benchmark_v3.md.
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
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    payload = run_identity_demo(seeds, methods=[], cache_dir=args.cache_dir, quantize=False, relearn=None)
    atomic_write_text(args.output, json.dumps(payload, indent=2) + "\n")
    print({seed: bool(record and record["passed"]) for seed, record in payload["validity"].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
