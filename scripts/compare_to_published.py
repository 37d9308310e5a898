#!/usr/bin/env python
"""Set a v3 demo run against the published one (docs/results/v3.json), seed by seed.

    hf-unlearn demo --output my_run                       # seed 0 (or --seeds ...)
    python scripts/compare_to_published.py my_run/results.json

Prints how many cells (method x table column) equal the published seed's value, lie inside the published
seed-to-seed spread and inside the published mean's 95% interval, and lists the cells outside the spread; exits 1
if any is (hf_unlearn/demo/reproduction.py says why the spread, not the mean's interval, is the test).
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from hf_unlearn.demo.reproduction import compare_to_published  # noqa: E402
from hf_unlearn.demo.tables import V3_RESULTS_FILE  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="A v3 run's results.json.")
    parser.add_argument("--published", default=os.path.join(ROOT, V3_RESULTS_FILE))
    args = parser.parse_args()
    with open(args.results, encoding="utf-8") as f:
        run = json.load(f)
    with open(args.published, encoding="utf-8") as f:
        published = json.load(f)
    report = compare_to_published(run, published)
    if not report["cells"]:
        print("No seed of this run is a published seed; nothing to compare.", file=sys.stderr)
        return 1
    print(f"{report['cells']} cells: {report['equal']} equal to the published seed's, {report['inside_spread']} inside "
          f"the published seed-to-seed spread, {report['inside_interval']} inside the published mean's 95% interval.")
    for cell in report["outside_spread"]:
        print(f"outside the spread: seed {cell['seed']} {cell['model']} {cell['metric']} = {cell['value']:.4f} "
              f"(published seed {cell['published_seed']:.4f}, spread {cell['spread'][0]:.4f}-{cell['spread'][1]:.4f})")
    return 1 if report["outside_spread"] else 0


if __name__ == "__main__":
    sys.exit(main())
