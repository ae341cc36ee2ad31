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
    srv = sub.add_parser(
        "serve",
        help="keep a service alive, like a process manager",
        description="Run MODULE:FUNCTION in dedicated workers and keep it running. "
        "SIGTERM or the first Ctrl-C stops it gracefully; a second Ctrl-C kills at once. "
        "Exit code: 0 clean, 1 restart limit spent, 130 forced.",
    )
    srv.add_argument("target", metavar="MODULE:FUNCTION", help="the function to run, e.g. app.server:main")
    srv.add_argument("--instances", type=int, default=1, help="how many copies to run (default 1)")
    srv.add_argument(
        "--restart", choices=("always", "on-failure", "never"), default="always", help="restart mode (default always)"
    )
    srv.add_argument("--restart-delay", type=float, default=1.0, help="seconds before a restart (default 1.0)")
    srv.add_argument("--restart-backoff", type=float, default=2.0, help="delay factor per consecutive failure")
    srv.add_argument("--restart-max-delay", type=float, default=30.0, help="cap on the restart delay (default 30)")
    srv.add_argument("--restart-limit", type=int, default=None, help="consecutive failures before giving up")
    srv.add_argument("--log-dir", default=None, help="also write each worker's output to a file there")
    srv.add_argument("--grace", type=float, default=5.0, help="seconds to stop gracefully before killing (default 5)")
    srv.add_argument("--worker", choices=("process", "thread"), default="process", help="worker kind (default process)")
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
    if args.command == "serve":
        import asyncio

        from ._restart import RestartPolicy
        from ._serve import serve
        from ._workers._thread import new_event_loop

        try:
            policy = RestartPolicy(
                mode=args.restart,
                delay=args.restart_delay,
                backoff=args.restart_backoff,
                max_delay=args.restart_max_delay,
                limit=args.restart_limit,
            )
            if args.instances < 1:
                raise ValueError(f"--instances must be >= 1, got {args.instances}")
        except ValueError as exc:
            print(f"taskpool serve: {exc}", file=sys.stderr)
            return 2
        loop = new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            return loop.run_until_complete(
                serve(
                    args.target,
                    instances=args.instances,
                    restart=policy,
                    log_dir=args.log_dir,
                    grace=args.grace,
                    worker=args.worker,
                )
            )
        except (ImportError, AttributeError, ValueError, TypeError) as exc:
            print(f"taskpool serve: cannot load {args.target}: {exc}", file=sys.stderr)
            return 2
        finally:
            asyncio.set_event_loop(None)
            loop.close()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
