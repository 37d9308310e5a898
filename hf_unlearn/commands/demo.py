"""``hf-unlearn demo [--output DIR] [--seed N] [--methods ga,npo,...] [--quick] [--text]``: the built-in benchmark.

Builds the synthetic benchmark, trains (or loads from the cache) a vanilla and an oracle tiny LLaVA, runs every
registered unlearning method from the vanilla model, evaluates all of them and writes DIR/results.json,
DIR/report.md and DIR/tradeoff.png. The vanilla and oracle models are cached under ``--cache-dir`` (default
``$HF_UNLEARN_CACHE`` or ``~/.cache/hf_unlearn``), so later runs only unlearn and evaluate.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="Run the built-in synthetic benchmark: vanilla, oracle and every unlearning method, with a report.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--output", default="hf_unlearn_demo",
                        help="Directory for results.json, report.md and tradeoff.png (default: ./hf_unlearn_demo).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the benchmark, models and training (default 0).")
    parser.add_argument("--methods", default=None,
                        help="Comma-separated methods to run (default: all registered). See --list-methods.")
    parser.add_argument("--quick", action="store_true",
                        help="Reduced benchmark and budgets (8 people): about a minute, for tests and CI.")
    parser.add_argument("--cache-dir", default=None,
                        help="Where vanilla/oracle models are cached (default: $HF_UNLEARN_CACHE or "
                             "~/.cache/hf_unlearn).")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the demo's tiny models gain nothing from more threads, and "
                             "training slows down many times when other processes share the cores).")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--list-methods", action="store_true", help="List the registered methods and exit.")
    parser.add_argument("--text", action="store_true",
                        help="The text demo instead: a tiny Llama that memorised fictitious authors (TOFU-shaped), "
                             "every text method, vanilla and a retain-only oracle, TOFU's metrics.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.text:
        from ..demo.text import run_text_cli

        return run_text_cli(args)
    import torch

    from ..demo import METHODS, DemoConfig, run_demo

    if args.list_methods:
        for name, spec in METHODS.items():
            print(f"{name:12s} {spec.description}")
        return 0
    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            print(f"error: unknown method(s) {unknown}; registered: {', '.join(METHODS)}.", file=sys.stderr)
            return 2
    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}.", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    config = DemoConfig.quick(seed=args.seed) if args.quick else DemoConfig(seed=args.seed)
    run_demo(config, output_dir=args.output, methods=methods, cache_dir=args.cache_dir,
             show_progress=not args.no_progress)
    return 0
