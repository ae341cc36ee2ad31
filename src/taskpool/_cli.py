"""The ``taskpool`` command line (also ``python -m taskpool``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._workers import kind_names

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskpool",
        description="An asyncio task pool: process, thread and inline workers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the examples ported from @renderdev/threadpool with live status",
        description="Run the examples (fib, primes, tribonacci, pi) ported from @renderdev/threadpool, the "
        "JavaScript library whose API taskpool ports, with their "
        "race / then / all_settled output, live status and timing.",
    )
    kinds = kind_names()  # every registered worker kind, third-party ones included
    demo.add_argument(
        "--worker",
        choices=kinds,
        default="process",
        help="the kind of the persistent workers (and of the pool in the 'tasks' scenario; default: process)",
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
        description="Run MODULE:FUNCTION in dedicated workers and keep it running. Each line an "
        "instance prints is shown as 'NAME.INSTANCE | line'. SIGTERM or the first Ctrl-C stops it "
        "gracefully; a second one kills at once. Exit code: 0 stopped cleanly, 1 restart limit spent "
        "(or a failure not restarted), 2 bad target or argument, 130 forced.",
    )
    srv.add_argument("target", metavar="MODULE:FUNCTION", help="the function to run, e.g. app.server:main")
    srv.add_argument("--name", default=None, help="the service's name in output prefixes (default: FUNCTION)")
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
    srv.add_argument("--worker", choices=kinds, default="process", help="worker kind (default process)")
    top = sub.add_parser(
        "top",
        help="watch a pool's status app in the terminal",
        description="A live terminal view of a pool served with pool.serve_status(): counts, rates, queue, "
        "workers, restarts and latest failures, redrawn on change. Keys: q quits (so does Ctrl-C). "
        "Exit code: 0 quit or the pool closed, 1 cannot connect or token refused, 2 bad argument.",
    )
    top.add_argument("url", metavar="URL", help="the status app, e.g. http://127.0.0.1:41234/ (?token= accepted)")
    top.add_argument("--token", default=None, help="the app's token (default: ?token= in URL, else $TASKPOOL_TOKEN)")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between polls without SSE (default 1)")
    top.add_argument("--once", action="store_true", help="print one plain snapshot and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "top":
        from ._top import run_top

        return run_top(args.url, token=args.token, interval=args.interval, once=args.once)
    return 2  # pragma: no cover - argparse rejects unknown commands


# The commands import what they need when they run, so ``taskpool --help`` stays fast.


def _quiet_logs() -> None:
    """Our own output says what happens; taskpool's log adds its warnings and errors.

    Unless the program configured structlog or logging already, a handler on the
    ``taskpool`` logger writes them to stderr, one readable line each, leaving out what
    workers print (logger ``taskpool.worker``: ``taskpool serve`` shows those lines itself,
    prefixed). Installed once, however often this is called.
    """
    import logging

    import structlog

    from ._log import LOGGER_NAME, WORKER_LOGGER_NAME

    lib = logging.getLogger(LOGGER_NAME)
    if structlog.is_configured() or logging.getLogger().handlers:
        return  # the program's own configuration decides
    if any(type(h) is not logging.NullHandler for h in lib.handlers):
        return  # configured already (by the program, or by an earlier call)

    class Console(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:  # sys.stderr as it is now: a program or a test may have swapped it
                sys.stderr.write(self.format(record) + "\n")
                sys.stderr.flush()
            except Exception:
                self.handleError(record)

    def not_worker_output(record: logging.LogRecord) -> bool:
        return record.name != WORKER_LOGGER_NAME and not record.name.startswith(WORKER_LOGGER_NAME + ".")

    console = Console(logging.WARNING)
    console.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s", "%H:%M:%S"))
    console.addFilter(not_worker_output)
    lib.addHandler(console)


def _demo(args: argparse.Namespace) -> int:
    from ._demo import SCENARIOS, run_demo

    if args.list:
        for name, (title, _) in SCENARIOS.items():
            print(f"{name:12} {title}")
        return 0
    names = args.scenario or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"taskpool demo: unknown scenario(s): {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    _quiet_logs()
    progress = args.progress
    if progress == "auto":
        progress = "bar" if sys.stdout.isatty() else "lines"
    return run_demo(names, worker=args.worker, progress=progress)


def _serve(args: argparse.Namespace) -> int:
    from ._loop import run
    from ._options import MAX_WORKERS, check_count, check_grace
    from ._restart import RestartPolicy
    from ._serve import EXIT_BAD_TARGET, resolve_target, serve

    def fail(message: str) -> int:
        print(f"taskpool serve: {message}", file=sys.stderr)
        return EXIT_BAD_TARGET

    try:  # every number through the same checks as the API's
        check_count("--instances", args.instances, maximum=MAX_WORKERS)
        check_grace("--grace", args.grace, optional=False)
        policy = RestartPolicy(
            mode=args.restart,
            delay=args.restart_delay,
            backoff=args.restart_backoff,
            max_delay=args.restart_max_delay,
            limit=args.restart_limit,
        )
    except (TypeError, ValueError) as exc:
        return fail(str(exc))
    try:
        fn = resolve_target(args.target)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        return fail(f"cannot load {args.target}: {type(exc).__name__}: {exc}")
    if args.log_dir is not None:
        try:
            os.makedirs(args.log_dir, exist_ok=True)
        except OSError as exc:
            return fail(f"cannot use --log-dir {args.log_dir}: {exc}")
    _quiet_logs()
    return run(  # on uvloop when it is installed
        serve(
            fn,
            name=args.name or args.target.rpartition(":")[2],
            instances=args.instances,
            restart=policy,
            log_dir=args.log_dir,
            grace=args.grace,
            worker=args.worker,
        )
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
