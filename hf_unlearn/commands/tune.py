"""``hf-unlearn tune [--methods ga,npo,...] [--seeds 100,101,102,103] [--output FILE] [--quick]``: the tuning protocol.

Runs every method's grid (``hf_unlearn.demo.tuning.TUNING_GRIDS``: the same number of points for every method) on
validation seeds that the published tables never report, scores each point by its distance to the oracle over
forget-VQA, forget-QA, retain-VQA and general accuracy, and records the grid, every score and the picks in
``hf_unlearn/demo/tuned.json`` (``--output``), which the demo reads as its defaults. ``--v3`` runs it on benchmark v3
(scored by its trusted metrics: truth ratio and ROUGE-L) into ``hf_unlearn/demo/tuned_v3.json``, its round 2 written
from its own round-1 pick (``tuning.v3_round_two``). ``--reuse-scores`` keeps the points a record already scored.
``--calibrate-relearn`` calibrates the relearning attack's budget instead (with ``--v3``: v3's, into tuned_v3.json).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "tune",
        help="Pick every method's demo hyperparameters by the tuning protocol on validation seeds.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--methods", default=None, help="Comma-separated methods (default: every method with a grid).")
    parser.add_argument("--seeds", default=None, help="Validation seeds (default: 100,101,102,103, for tuning and "
                        "--calibrate-relearn alike); never report them.")
    parser.add_argument("--output", default=None, help="Where to write the record (default: hf_unlearn/demo/tuned.json).")
    parser.add_argument("--quick", action="store_true", help="The demo's reduced benchmark (for tests, not conclusions).")
    parser.add_argument("--v3", action="store_true",
                        help="Tune on benchmark v3 (the identity benchmark, scored by its trusted metrics) into "
                             "hf_unlearn/demo/tuned_v3.json; `hf-unlearn demo` runs these picks.")
    parser.add_argument("--reuse-scores", action="store_true",
                        help="Do not re-run a point the record at --output already scored under the same protocol "
                             "(seeds, benchmark, metrics, budget); valid only while the methods' code is unchanged "
                             "since that record.")
    parser.add_argument("--calibrate-relearn", action="store_true",
                        help="Instead of the methods: calibrate the relearning attack's budget (no damage to vanilla, "
                             "exposes a model that only hides) on the validation seeds; with --v3, v3's attack.")
    parser.add_argument("--cache-dir", default=None, help="Where vanilla/oracle models are cached.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1).")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..demo import DemoConfig
    from ..demo.tuning import TUNING_GRIDS, VALIDATION_SEEDS, calibrate, tune
    from .demo import parse_seeds

    try:
        seeds = parse_seeds(None, args.seeds) if args.seeds else list(VALIDATION_SEEDS)
    except ValueError as err:
        print(f"hf-unlearn tune: error: {err}", file=sys.stderr)
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    unknown = [m for m in methods or [] if m not in TUNING_GRIDS]
    if unknown:
        print(f"hf-unlearn tune: error: no tuning grid for {unknown}; grids: {', '.join(TUNING_GRIDS)}.",
              file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"hf-unlearn tune: error: --threads must be >= 1, got {args.threads}.", file=sys.stderr)
        return 2
    problem = _unwritable(args.output)
    if problem:
        print(f"hf-unlearn tune: error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    config = DemoConfig.quick() if args.quick else DemoConfig()
    kwargs = {"output": args.output} if args.output else {}
    if args.v3 and args.quick:
        print("hf-unlearn tune: error: --v3 tunes the methods at v3's one configuration; drop --quick.",
              file=sys.stderr)
        return 2
    if args.calibrate_relearn:
        from ..demo.recipe import TUNED_V3_FILE

        if args.v3:
            kwargs.setdefault("output", TUNED_V3_FILE)
        calibrate(seeds, config=config, cache_dir=args.cache_dir, show_progress=not args.no_progress, v3=args.v3,
                  **kwargs)
        return 0
    tune(methods, seeds=seeds, config=config, cache_dir=args.cache_dir, show_progress=not args.no_progress,
         v3=args.v3, reuse_scores=args.reuse_scores, **kwargs)
    return 0


def _unwritable(output: str | None) -> str | None:
    """Why the record cannot be written (checked before hours of tuning), or None."""
    import os

    from ..demo.recipe import TUNED_FILE
    from ..disk import DiskWriteError, check_output_folder

    folder = os.path.dirname(os.path.abspath(output or TUNED_FILE))
    if not os.path.isdir(folder):
        return f"--output: the folder {folder!r} does not exist; create it or choose another path."
    try:
        check_output_folder(folder, option="--output")
    except DiskWriteError as err:
        return f"--output: {err}"
    return None
