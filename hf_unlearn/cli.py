"""The ``hf-unlearn`` command: ``demo``, ``run``, ``eval``, ``push`` and ``estimate-memory``.

Each sub-command lives in ``hf_unlearn/commands/<name>.py`` and exposes ``add_parser(subparsers)``, which registers
its parser with ``func=<callable(args) -> int>``. Imports happen per command so ``--help`` stays fast. A command that
sets ``accepts_extra_args=True`` (``run``: training-argument flags) gets the arguments argparse did not know as
``args.extra_args``; any other command refuses them.

A failure is one line (``commands/failures.py``): ``hf-unlearn <cmd>: error: ...`` and exit status 2 for a problem the
user can fix, ``hf-unlearn <cmd>: unexpected error (...)`` and exit status 1 otherwise. ``hf-unlearn --debug <cmd> ...``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "tune", "run", "eval", "push", "estimate_memory")


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes are one ``hf-unlearn <cmd>: error: ...`` line and exit status 2 (``--help`` shows usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="hf-unlearn", description="Machine unlearning for Hugging Face models.")
    parser.add_argument("--debug", action="store_true",
                        help="On a failure, show the full traceback instead of one line (give it before the command: "
                             "hf-unlearn --debug run ...).")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for name in COMMANDS:
        importlib.import_module(f"hf_unlearn.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    try:
        return int(args.func(args) or 0)
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # noqa: BLE001 - every failure ends as one line; --debug shows the traceback
        if args.debug:
            raise
        from .commands.failures import report_failure

        return report_failure(args.command, err)


if __name__ == "__main__":
    sys.exit(main())
