#!/usr/bin/env python
"""Regenerate the benchmark tables of README.md, docs/benchmark.md and docs/methods/*.md from the committed results.

    python scripts/render_tables.py            # rewrite the generated blocks in place
    python scripts/render_tables.py --check    # exit 1 if a committed block differs from what this renders

Sources: docs/results/demo.json (a multi-seed `hf-unlearn demo --seeds ...` results.json),
docs/results/text_demo.json (`hf-unlearn demo --text --seeds ...`), docs/results/demo_real_quick.json
(`hf-unlearn demo --real --quick`), docs/results/v3.json (`hf-unlearn demo --seeds ...`), docs/results/v3_validity.json,
docs/results/v3_configurations.json, docs/results/v3_costs.json, docs/results/typographic_reading.json and
hf_unlearn/demo/tuned.json (the tuning
protocol's record). Never edit the blocks by hand.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_unlearn.demo.tables import RESULTS_FILE, TUNING_FILE, block_in, load_blocks, update_files  # noqa: E402

FILES = ("README.md", os.path.join("docs", "benchmark.md"), os.path.join("docs", "text.md"),
         os.path.join("docs", "real_weights.md"), os.path.join("docs", "benchmark_v3.md"),
         os.path.join("docs", "robustness.md"),
         *sorted(os.path.join("docs", "methods", f) for f in os.listdir(os.path.join(ROOT, "docs", "methods"))
                 if f.endswith(".md")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=os.path.join(ROOT, RESULTS_FILE))
    parser.add_argument("--tuning", default=os.path.join(ROOT, TUNING_FILE))
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 on a difference.")
    args = parser.parse_args()
    files = [os.path.join(ROOT, f) for f in FILES]
    if args.check:
        blocks = load_blocks(args.results, args.tuning)
        stale = []
        for path in files:
            text = open(path, encoding="utf-8").read()
            stale += [f"{path}: {name}" for name, content in blocks.items()
                      if block_in(text, name) not in (None, content)]
        for line in stale:
            print(f"stale generated block: {line}", file=sys.stderr)
        return 1 if stale else 0
    for path in update_files(args.results, files, args.tuning):
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
