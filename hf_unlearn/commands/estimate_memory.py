"""``hf-unlearn estimate-memory MODEL_ID_OR_CONFIG_PATH --num-gpus 8 [--offload]``: per-GPU memory of a run.

Reads only the model config (a local ``config.json`` works offline; a Hub id needs the network), builds the model on
the ``meta`` device to count parameters, and prints the per-GPU breakdown of ``hf_unlearn.integrations.memory`` for
ZeRO-2 and ZeRO-3 (and ZeRO-3 + CPU offload with ``--offload``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from ..integrations.memory import SETUPS, TRAINABLE_CHOICES, MemoryPlan, format_report


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "estimate-memory",
        help="Per-GPU memory of an unlearning run under DeepSpeed ZeRO-2 / ZeRO-3 (from the model config only).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL_ID_OR_CONFIG_PATH",
                        help="A local config.json, a model folder, or a Hub model id (needs the network).")
    parser.add_argument("--num-gpus", type=int, default=8, help="GPUs the run is sharded over (default: 8).")
    parser.add_argument("--offload", action="store_true",
                        help="Also show ZeRO-3 with parameters and optimizer states offloaded to the CPU.")
    parser.add_argument("--trainable", choices=TRAINABLE_CHOICES, default="all",
                        help="Parameters that train: all, language (LM + lm_head) or vision (tower + projector). "
                             "With a saliency mask, the rest is frozen (default: all).")
    parser.add_argument("--no-mask", dest="masked", action="store_false",
                        help="No saliency mask (GA / NPO without MMUnlearner-style masking).")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..integrations.memory import count_parameters_from_config, load_config

    if args.num_gpus < 1:
        print(f"hf-unlearn estimate-memory: error: --num-gpus must be >= 1, got {args.num_gpus}.", file=sys.stderr)
        return 2
    try:
        config = load_config(args.model)
    except ValueError as error:
        print(f"hf-unlearn estimate-memory: error: {error}", file=sys.stderr)
        return 2
    # DeepSpeed logs to stdout (accelerator detection at import): keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr):
        import deepspeed.runtime.zero.stage3  # noqa: F401
    counts = count_parameters_from_config(config)
    plan = MemoryPlan(num_gpus=args.num_gpus, trainable=args.trainable, masked=args.masked)
    setups = SETUPS if args.offload else SETUPS[:2]
    print(format_report(args.model, counts, plan, setups))
    return 0
