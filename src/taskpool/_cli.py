"""The ``taskpool`` command line (also ``python -m taskpool``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

KINDS = ("process", "thread", "inline")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskpool",
        description="An asyncio task pool: process, thread and inline workers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the seed examples with live status",
        description="Run the seed examples (fib, primes, tribonacci, pi) with their "
        "race / then / all_settled output, live status and timing.",
    )
    demo.add_argument(
        "--worker",
        choices=KINDS,
        default="process",
        help="the worker kind of the pool's own tasks (default: process)",
    )
    demo.add_argument(
        "--scenario",
        action="append",
        default=None,
        help="run only this scenario (repeatable); see --list",
    )
    demo.add_argument("--list", action="store_true", help="list the scenarios and exit")
    demo.add_argument(
        "--progress",
        choices=("auto", "bar", "lines", "off"),
        default="auto",
        help="live status: a progress bar on a terminal, plain lines otherwise (default: auto)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import SCENARIOS, run_demo

        if args.list:
            for name, (title, _) in SCENARIOS.items():
                print(f"{name:12} {title}")
            return 0
        names = args.scenario or list(SCENARIOS)
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}; see --list", file=sys.stderr)
            return 2
        progress = args.progress
        if progress == "auto":
            progress = "bar" if sys.stdout.isatty() else "lines"
        return run_demo(names, worker=args.worker, progress=progress)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
