"""The ``hf-unlearn`` command: ``demo``, ``run``, ``eval``, ``push`` and ``estimate-memory``.

Each sub-command lives in ``hf_unlearn/commands/<name>.py`` and exposes ``add_parser(subparsers)``, which registers
its parser with ``func=<callable(args) -> int>``. Imports happen per command so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "tune", "run", "eval", "push", "estimate_memory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-unlearn", description="Machine unlearning for Hugging Face models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"hf_unlearn.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
