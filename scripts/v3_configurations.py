"""Record a benchmark-v3 configuration's validity run for the comparison table of docs/benchmark_v3.md.

    python scripts/v3_configurations.py --label "twenty values, ..." RUN.json [RUN.json ...]

Each RUN.json is a ``scripts/v3_validity.py`` output (one configuration may be measured in several processes, one
file per seed subset); their per-seed validity records (traces dropped) are stored under ``--label`` in
``docs/results/v3_configurations.json`` (replacing a configuration of that label), which
``scripts/render_tables.py`` renders. Never edit the table by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hf_unlearn.demo.tables import V3_CONFIGURATIONS_FILE  # noqa: E402
from hf_unlearn.utils import write_json_atomic  # noqa: E402


def _without_traces(record: dict) -> dict:
    return {key: ({k: v for k, v in value.items() if k != "trace"} if isinstance(value, dict) else value)
            for key, value in record.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--label", required=True)
    parser.add_argument("--output", default=V3_CONFIGURATIONS_FILE)
    args = parser.parse_args(argv)
    validity: dict = {}
    for path in args.runs:
        with open(path, encoding="utf-8") as f:
            validity.update({seed: _without_traces(r) for seed, r in json.load(f)["validity"].items() if r})
    record = {"configurations": []}
    if os.path.isfile(args.output):
        with open(args.output, encoding="utf-8") as f:
            record = json.load(f)
    kept = [c for c in record["configurations"] if c["label"] != args.label]
    record["configurations"] = [*kept, {"label": args.label, "validity": validity}]
    write_json_atomic(args.output, record)
    print(f"{args.label}: {len(validity)} seeds -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
