"""``hf-unlearn demo [--output DIR] [--seeds 0,1,2,3,4] [--methods ga,npo,...] [--quick] [--workers N]``: the benchmark.

At each seed: builds benchmark v3 (docs/benchmark_v3.md: people whose facts are learnt from text and whose faces are
recognised as them), trains (or loads from the cache) a vanilla and an oracle tiny LLaVA to their criterion, runs
every registered unlearning method from the vanilla under the official protocol and evaluates all of them on
accuracy, answer probability, truth ratio, ROUGE-L and BLEU, after 8- and 4-bit quantization and after the
relearning attack, beside the instrument's own validity checks. Over the seeds it reports each metric's mean and a 95%
interval (bootstrap over seeds and questions) and each method's distance to the oracle, and writes DIR/results.json
and DIR/report.md. The vanilla and oracle models are cached under ``--cache-dir`` (default ``$HF_UNLEARN_CACHE`` or
``~/.cache/hf_unlearn``), so later runs only unlearn and evaluate. One seed proves nothing: publish numbers from
several. ``--text`` runs the text demo instead (a tiny Llama that memorised fictitious authors, TOFU-shaped);
``--real`` the real-weights demo; ``--v2`` the retired benchmark v2 (docs/benchmark.md says why it was retired).
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--seed", type=int, default=None,
                        help="Seed of the benchmark, models and training (default 0); shorthand for --seeds N.")
    parser.add_argument("--seeds", default=None,
                        help="Comma-separated seeds, e.g. 0,1,2,3,4: the whole demo at each, with intervals over "
                             "seeds and questions (time grows with the number of seeds).")
    parser.add_argument("--methods", default=None,
                        help="Comma-separated methods to run (default: all registered). See --list-methods.")
    parser.add_argument("--real", action="store_true",
                        help="Real pretrained weights and real photos: the 157M real_llava (SmolLM2-135M + DINOv2-S, "
                             "needs the `real` extra, see docs/real_weights.md) on fictitious characters on skimage "
                             "photos. Slow on CPU: minutes per method.")
    parser.add_argument("--quick", action="store_true",
                        help="A first look: on v3, 12 questions per split and no validity checks; with --v2, the "
                             "reduced benchmark and budgets (8 people). Not for conclusions.")
    parser.add_argument("--cache-dir", default=None,
                        help="Where vanilla/oracle models are cached (default: $HF_UNLEARN_CACHE or "
                             "~/.cache/hf_unlearn).")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default 1: the demo's tiny models gain nothing from more threads, and "
                             "training slows down many times when other processes share the cores; with --real, "
                             "torch's default).")
    parser.add_argument("--workers", type=int, default=1,
                        help="Benchmark v3 only: this many worker processes, sharing out the seeds' methods, "
                             "reference evaluations and validity checks, and the --threads threads (at least 1 each; "
                             "same numbers as one process; 2 on 2 cores about halves the wall time, of one seed too).")
    parser.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    parser.add_argument("--list-methods", action="store_true", help="List the registered methods and exit.")
    parser.add_argument("--v3", action="store_true",
                        help="Benchmark v3, the default (quick configuration, docs/benchmark_v3.md): identity-"
                             "mediated knowledge, the official protocol, truth ratio / ROUGE-L / BLEU on every split, "
                             "the quantization and relearning attacks, and the instrument's validity checks at every "
                             "seed (with --quick: 12 questions per split, no validity checks).")
    parser.add_argument("--v2", action="store_true",
                        help="The retired benchmark v2 (its protocol protects text knowledge for every method; "
                             "docs/benchmark.md), for comparison with earlier releases; writes tradeoff.png too.")
    parser.add_argument("--text", action="store_true",
                        help="The text demo instead: a tiny Llama that memorised fictitious authors (TOFU-shaped), "
                             "every text method, vanilla and a retain-only oracle, TOFU's metrics.")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    chosen = [flag for flag, on in (("--text", args.text), ("--real", args.real), ("--v2", args.v2),
                                    ("--v3", args.v3)) if on]
    if len(chosen) > 1:
        print(f"hf-unlearn demo: error: {' and '.join(chosen)} pick different benchmarks; pass one of them.",
              file=sys.stderr)
        return 2
    v3 = not (args.real or args.v2 or args.text)
    if args.workers < 1 or (args.workers > 1 and not v3):
        print(f"hf-unlearn demo: error: --workers {args.workers}: pass a number >= 1, and more than 1 only on "
              "benchmark v3.", file=sys.stderr)
        return 2
    if args.text:
        from ..demo.text import run_text_cli

        try:
            seeds = parse_seeds(args.seed, args.seeds)
        except ValueError as err:
            print(f"hf-unlearn demo: error: {err}", file=sys.stderr)
            return 2
        args.seeds = seeds
        args.seed = seeds[0]
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
            print(f"hf-unlearn demo: error: unknown method(s) {unknown}; registered: {', '.join(METHODS)}.",
                  file=sys.stderr)
            return 2
    try:
        seeds = parse_seeds(args.seed, args.seeds)
    except ValueError as err:
        print(f"hf-unlearn demo: error: {err}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"hf-unlearn demo: error: --threads must be >= 1, got {args.threads}.", file=sys.stderr)
        return 2
    problem = _unwritable(args)
    if problem:
        print(f"hf-unlearn demo: error: {problem}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or (torch.get_num_threads() if args.real else 1))
    if v3:
        return _run_v3(args, seeds, methods)
    if args.real:
        from ..demo.real import RealDemoConfig, run_real_demo

        config = RealDemoConfig.quick(seed=seeds[0]) if args.quick else RealDemoConfig(seed=seeds[0])
        run_real_demo(config, output_dir=args.output, methods=methods, cache_dir=args.cache_dir, seeds=seeds)
        return 0
    config = DemoConfig.quick(seed=seeds[0]) if args.quick else DemoConfig(seed=seeds[0])
    run_demo(config, output_dir=args.output, methods=methods, cache_dir=args.cache_dir,
             show_progress=not args.no_progress, seeds=seeds)
    return 0


def _run_v3(args: argparse.Namespace, seeds: list[int], methods: list[str] | None) -> int:
    from ..demo.identity_pipeline import run_identity_demo
    from ..demo.identity_report import render_identity_report, write_identity_outputs
    from ..demo.recipe import v3_relearn

    # --quick: a first look, 12 questions per split and no validity checks (the report's header says so).
    payload = run_identity_demo(seeds, methods, cache_dir=args.cache_dir, relearn=v3_relearn(),
                                validity=not args.quick, rows_per_split=12 if args.quick else None,
                                workers=args.workers)
    write_identity_outputs(payload, args.output)
    print(render_identity_report(payload))
    print(f"[demo] benchmark v3, seeds {seeds}: results in {os.path.abspath(args.output)}")
    return 0


def _unwritable(args: argparse.Namespace) -> str | None:
    """Why --output or the model cache cannot be written (checked before minutes of training), or None."""
    from ..demo import default_cache_dir
    from ..disk import DiskWriteError, check_output_folder

    for folder, option in ((args.output, "--output"), (args.cache_dir or default_cache_dir(), "--cache-dir")):
        if os.path.exists(folder) and not os.path.isdir(folder):
            return f"{option} {folder!r} is a file; pass a folder."
        try:
            check_output_folder(folder, option=option)
        except DiskWriteError as err:
            return f"{option}: {err}"
    return None


def parse_seeds(seed: int | None, seeds: str | None) -> list[int]:
    if seed is not None and seeds is not None:
        raise ValueError("pass --seed N or --seeds A,B,..., not both.")
    if seeds is None:
        return [0 if seed is None else seed]
    try:
        values = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {seeds!r}.") from None
    if not values or len(set(values)) != len(values):
        raise ValueError(f"--seeds must list distinct integers, got {seeds!r}.")
    return values
