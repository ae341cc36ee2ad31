"""Run CPython 3.11's ``Lib/test/test_concurrent_futures.py`` against taskpool's drop-in executors.

    python tests/cpython/run_futures.py                   # against taskpool.executor
    python tests/cpython/run_futures.py --against cf      # against concurrent.futures (harness check)
    python tests/cpython/run_futures.py --file PATH       # another copy of the test file
    python tests/cpython/run_futures.py --only test_map   # only the tests whose id contains a string
    python tests/cpython/run_futures.py --no-skips        # SKIPS' tests too: is an entry still needed?
    python tests/cpython/run_futures.py --check-docs      # docs/cpython-tests.md's tables == SKIPS, UPSTREAM_SKIPS
    python tests/cpython/run_futures.py --print-docs      # those tables, as markdown

The file comes from Debian's ``libpython3.11-testsuite`` (``/usr/lib/python3.11/test/``); ``test.support``
is the running interpreter's own. How the file is made to test taskpool:

- A temporary *shim* directory holds a package ``test`` (the interpreter's ``test`` package extended
  with the shim, so ``test.support`` stays the interpreter's) and a copy of the file as
  ``test/test_concurrent_futures.py``. The shim goes first on ``sys.path``, so the module imports as
  ``test.test_concurrent_futures`` here, in taskpool's workers (they get the parent's ``sys.path``) and
  in multiprocessing's spawned children (same), all of which unpickle the test's functions by reference.
- The module's ``assert_python_ok`` (its scripts run in ``python -I``, which ignores PYTHONPATH) is
  wrapped: each ``-c`` script gets a preamble that puts the shim on ``sys.path`` and, against taskpool,
  replaces ``concurrent.futures.ProcessPoolExecutor`` / ``ThreadPoolExecutor`` with taskpool's.
- Against taskpool, ``ThreadPoolMixin`` and ``ProcessPoolSpawnMixin`` get taskpool's executors, and the
  module's ``futures`` global becomes ``concurrent.futures`` with those two names replaced.
- Only the thread and the *spawn* process variants run, with the kind-independent classes: taskpool's
  workers are always spawned (``mp_context`` is ignored), so the fork and forkserver variants would run
  the same code again with objects made in another context.
- A test that reads a CPython internal taskpool does not mirror may be skipped, by exact id, with its
  reason: :data:`SKIPS` (applied against taskpool only: against ``concurrent.futures`` everything
  selected runs). Any other skip must be one the file makes itself (:data:`UPSTREAM_SKIPS`); an
  unexpected skip is a failure.

Exit status: 0 when everything that ran passed, 1 on any failure, error, unexpected success or
unexpected skip, 2 when the run could not start (no test file, a stale skip table, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import importlib
import importlib.machinery
import os
import pathlib
import re
import shutil
import signal
import sys
import tempfile
import time
import types
import unittest
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

DEFAULT_FILE = "/usr/lib/python3.11/test/test_concurrent_futures.py"
APT_PACKAGE = "libpython3.11-testsuite"
MODULE = "test.test_concurrent_futures"
DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "cpython-tests.md"

#: The tests skipped against taskpool, by id (relative to ``test.test_concurrent_futures``), and why.
#: Only a test that reads a CPython internal taskpool does not mirror may be here; docs/cpython-tests.md
#: has the same table (``--check-docs``). Empty: taskpool's executors mirror every internal the file
#: reads (``_threads``, ``_processes``, ``_max_workers``, ``_broken``, ``_mp_context``, ``_call_queue``,
#: ``_executor_manager_thread``, the default thread names), so all of those tests run. Check that an
#: entry is still needed with ``--no-skips``.
SKIPS: dict[str, str] = {}

#: The skips the test file makes itself on this platform, by id, with a part of their message: they
#: happen against ``concurrent.futures`` too. Any skip in neither table fails the run.
UPSTREAM_SKIPS: dict[str, str] = {
    "ProcessPoolSpawnProcessPoolExecutorTest.test_max_workers_too_large": "Windows-only process limit",
    "ProcessPoolSpawnProcessPoolShutdownTest.test_hang_gh83386": "Hangs, see https://github.com/python/cpython/issues/83386",
}

_EXCLUDED_MIXINS = ("ProcessPoolForkMixin", "ProcessPoolForkserverMixin")
_SKIP_MARKERS = ("<!-- runner-skips:start -->", "<!-- runner-skips:end -->")
_UPSTREAM_MARKERS = ("<!-- upstream-skips:start -->", "<!-- upstream-skips:end -->")
_SHIM_INIT = '''"""The interpreter's ``test`` package, extended with this directory (written by run_futures.py)."""
__path__ = [{shim!r}, {stdlib!r}]
'''


class SetupError(Exception):
    """The run cannot start: the message says why (exit status 2)."""


# --------------------------------------------------------------------------- loading


def find_test_file(path: str | None) -> pathlib.Path:
    """The CPython test file: ``path``, else :data:`DEFAULT_FILE`. Raises SetupError naming the apt
    package when it is missing."""
    found = pathlib.Path(path or DEFAULT_FILE)
    if not found.is_file():
        raise SetupError(
            f"{found} not found: install Debian's {APT_PACKAGE} (apt-get install -y {APT_PACKAGE}), "
            "or pass --file with a copy of CPython 3.11's Lib/test/test_concurrent_futures.py"
        )
    return found


def make_shim(test_file: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
    """Write the shim package ``test`` under ``into`` (see the module docstring); return ``into``."""
    if "test" in sys.modules:
        raise SetupError("the 'test' package is already imported: the shim must come first")
    # Found without importing it: the shim must be the ``test`` package of this process.
    spec = importlib.machinery.PathFinder.find_spec("test", sys.path)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations or not (pathlib.Path(locations[0]) / "support" / "__init__.py").is_file():
        raise SetupError("this interpreter has no test.support (a stripped-down Python?)")
    stdlib_test = locations[0]
    package = into / "test"
    package.mkdir()
    (package / "__init__.py").write_text(_SHIM_INIT.format(shim=str(package), stdlib=stdlib_test))
    shutil.copyfile(test_file, package / "test_concurrent_futures.py")
    return into


def child_preamble(shim: pathlib.Path, against: str) -> str:
    """Python lines put before each ``-c`` script the test runs in a child interpreter: the shim on
    ``sys.path`` (``-I`` ignores PYTHONPATH) and, against taskpool, taskpool's executors in
    ``concurrent.futures``."""
    lines = [
        "import sys as _rf_sys",
        f"_rf_sys.path[:0] = [_p for _p in ({str(shim)!r},) if _p not in _rf_sys.path]",
    ]
    if against == "taskpool":
        import taskpool

        where = str(pathlib.Path(taskpool.__file__).resolve().parent.parent)
        lines += [
            f"_rf_sys.path += [_p for _p in ({where!r},) if _p not in _rf_sys.path]",
            "import concurrent.futures as _rf_cf, taskpool.executor as _rf_ex",
            "_rf_cf.ProcessPoolExecutor = _rf_ex.ProcessPoolExecutor",
            "_rf_cf.ThreadPoolExecutor = _rf_ex.ThreadPoolExecutor",
        ]
    return "\n".join(lines) + "\n"


def wrap_assert_python(original: Callable[..., Any], preamble: str) -> Callable[..., Any]:
    """``original`` (``script_helper.assert_python_ok``) with ``preamble`` put before its ``-c`` script."""

    def assert_python_ok(*args: Any, **env_vars: Any) -> Any:
        argv = list(args)
        for i, arg in enumerate(argv[:-1]):
            if arg == "-c":
                argv[i + 1] = preamble + argv[i + 1]
                break
        return original(*argv, **env_vars)

    return assert_python_ok


def load_module(test_file: pathlib.Path, shim: pathlib.Path, against: str) -> types.ModuleType:
    """Import the test file as ``test.test_concurrent_futures`` through the shim, pointed at ``against``."""
    make_shim(test_file, shim)
    sys.path.insert(0, str(shim))
    importlib.invalidate_caches()
    mod: Any = importlib.import_module(MODULE)  # the module as loaded: patched below
    expected = (shim / "test" / "test_concurrent_futures.py").resolve()
    if pathlib.Path(mod.__file__ or "").resolve() != expected:
        raise SetupError(f"{MODULE} imported from {mod.__file__}, not from the shim")
    mod.assert_python_ok = wrap_assert_python(mod.assert_python_ok, child_preamble(shim, against))
    if against == "taskpool":
        import concurrent.futures as cf
        import concurrent.futures.process
        import concurrent.futures.thread  # noqa: F401 - so that the namespace has both submodules

        from taskpool.executor import ProcessPoolExecutor, ThreadPoolExecutor

        namespace = types.ModuleType(cf.__name__, cf.__doc__)
        namespace.__dict__.update(vars(cf))
        namespace.ProcessPoolExecutor = ProcessPoolExecutor  # type: ignore[attr-defined]
        namespace.ThreadPoolExecutor = ThreadPoolExecutor  # type: ignore[attr-defined]
        mod.futures = namespace
        mod.ThreadPoolMixin.executor_type = ThreadPoolExecutor
        mod.ProcessPoolSpawnMixin.executor_type = ProcessPoolExecutor
    loaded: types.ModuleType = mod
    return loaded


# --------------------------------------------------------------------------- selection


def short_id(test: unittest.TestCase) -> str:
    """The test's id relative to the module: ``Class.test_method``."""
    return test.id().removeprefix(MODULE + ".")


def _flatten(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def _classes(mod: types.ModuleType) -> Iterator[type[unittest.TestCase]]:
    for value in vars(mod).values():
        if isinstance(value, type) and issubclass(value, unittest.TestCase) and value.__module__ == MODULE:
            yield value


def select(mod: types.ModuleType) -> list[unittest.TestCase]:
    """The thread, spawn and kind-independent tests of ``mod``, in the loader's order (fork and
    forkserver variants left out). Raises SetupError when the file has none of some kind, which
    means this runner no longer understands it."""
    excluded = {getattr(mod, name) for name in _EXCLUDED_MIXINS}
    tests: list[unittest.TestCase] = []
    kinds = {"thread": 0, "spawn": 0, "independent": 0}
    for cls in sorted(_classes(mod), key=lambda c: c.__name__):
        if excluded.intersection(cls.__mro__):
            continue
        loaded = list(_flatten(unittest.defaultTestLoader.loadTestsFromTestCase(cls)))
        if issubclass(cls, mod.ThreadPoolMixin):
            kinds["thread"] += len(loaded)
        elif issubclass(cls, mod.ProcessPoolSpawnMixin):
            kinds["spawn"] += len(loaded)
        elif issubclass(cls, mod.ExecutorMixin):
            raise SetupError(f"{cls.__name__}: an executor mixin this runner does not know")
        else:
            kinds["independent"] += len(loaded)
        tests += loaded
    if not all(kinds.values()):
        raise SetupError(f"unexpected test file, tests found per kind: {kinds}")
    return tests


def apply_skips(mod: types.ModuleType, tests: Sequence[unittest.TestCase], skips: dict[str, str]) -> None:
    """Mark each test of ``skips`` skipped, on its own class only. Raises SetupError for an id that
    is not among ``tests`` (a stale table)."""
    known = {short_id(t) for t in tests}
    stale = sorted(set(skips) - known)
    if stale:
        raise SetupError(f"skip table names tests that are not selected: {stale}")
    for test_id, reason in skips.items():
        cls_name, method = test_id.split(".")
        cls = getattr(mod, cls_name)
        setattr(cls, method, unittest.skip(reason)(getattr(cls, method)))


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Outcome:
    """What happened to one test."""

    test_id: str
    status: str  # pass, fail, error, skip, unexpected-success, expected-failure
    detail: str = ""
    seconds: float = 0.0
    env_changed: bool = False


class TestHung(BaseException):
    """Raised in the main thread when a test outlives the per-test timeout (a BaseException, so
    that no ``except Exception`` on the way swallows it; unittest records it as an error)."""


@dataclasses.dataclass
class Watchdog:
    """Per-test timeout: SIGALRM interrupts the hung test (its stacks dumped first), the run goes on;
    after ``max_hangs`` hangs, or if the interruption does not land, the run stops with a summary."""

    timeout: float = 90.0
    max_hangs: int = 3
    skips: dict[str, str] = dataclasses.field(default_factory=dict)


class RecordingResult(unittest.TextTestResult):
    """A verbose TextTestResult that also keeps an :class:`Outcome` per test, notes the tests after
    which ``test.support`` saw leftover threads or child processes, and arms the :class:`Watchdog`."""

    outcomes: list[Outcome]
    watchdog: Watchdog = Watchdog()

    def __init__(self, stream: Any, descriptions: bool, verbosity: int) -> None:
        super().__init__(stream, descriptions, verbosity)
        self.outcomes = []
        self.hangs = 0
        self._started = 0.0
        self._current = ""
        signal.signal(signal.SIGALRM, self._on_alarm)

    def startTest(self, test: unittest.TestCase) -> None:
        """Reset the per-test state and arm the watchdog."""
        support: Any = sys.modules["test.support"]
        support.environment_altered = False
        self._started = time.monotonic()
        self._current = short_id(test)
        signal.setitimer(signal.ITIMER_REAL, self.watchdog.timeout)
        # The backstop, should the interruption not land (a hang holding the GIL, a handler that
        # swallows BaseException): stacks, then exit.
        faulthandler.dump_traceback_later(self.watchdog.timeout + 60, exit=True)
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        """Disarm the watchdog; note leftovers."""
        support: Any = sys.modules["test.support"]
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        if self.outcomes and self.outcomes[-1].test_id == short_id(test):
            self.outcomes[-1].seconds = time.monotonic() - self._started
            self.outcomes[-1].env_changed = bool(support.environment_altered)

    def _on_alarm(self, signum: int, frame: types.FrameType | None) -> None:
        self.hangs += 1
        timeout = self.watchdog.timeout
        sys.stdout.flush()
        print(f"\nTIMEOUT: {self._current} still running after {timeout:.0f} s; stacks:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if self.hangs >= self.watchdog.max_hangs:
            if not (self.outcomes and self.outcomes[-1].test_id == self._current):
                self.outcomes.append(Outcome(self._current, "error", f"hung for more than {timeout:.0f} s"))
            print(f"\n{self.hangs} tests hung: stopping the run", file=sys.stderr, flush=True)
            # unittest will not print its report: the tracebacks so far, then the summary.
            for o in self.outcomes:
                if o.status in ("fail", "error"):
                    print(f"{'=' * 78}\n{o.status.upper()}: {o.test_id}\n{'-' * 78}\n{o.detail}", flush=True)
            summarize(self.outcomes, self.watchdog.skips, sys.stdout)
            os._exit(1)
        # Rearmed: should the test hang again while cleaning up (tearDown), it is interrupted again.
        signal.setitimer(signal.ITIMER_REAL, timeout)
        raise TestHung(f"{self._current} hung for more than {timeout:.0f} s (stacks above, on stderr)")

    def _record(self, test: unittest.TestCase, status: str, detail: str = "") -> None:
        # One outcome per test: an error in tearDown after a failure keeps the first.
        if not (self.outcomes and self.outcomes[-1].test_id == short_id(test)):
            self.outcomes.append(Outcome(short_id(test), status, detail))

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: D102
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: D102
        super().addFailure(test, err)
        self._record(test, "fail", self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: D102
        super().addError(test, err)
        if hasattr(test, "_testMethodName"):
            self._record(test, "error", self.errors[-1][1])
        else:  # a module or class fixture (setUpModule, a module cleanup): unittest's _ErrorHolder
            self.outcomes.append(Outcome(str(test), "error", self.errors[-1][1]))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: D102
        super().addSkip(test, reason)
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: D102
        super().addExpectedFailure(test, err)
        self._record(test, "expected-failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: D102
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected-success")


def run(tests: Sequence[unittest.TestCase], watchdog: Watchdog) -> list[Outcome]:
    """Run ``tests`` as one suite (so setUpModule and the module cleanups run once), verbosely."""
    RecordingResult.watchdog = watchdog
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=RecordingResult)
    try:
        result = runner.run(unittest.TestSuite(tests))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
    assert isinstance(result, RecordingResult)
    return result.outcomes


# --------------------------------------------------------------------------- reporting


def classify(outcomes: Sequence[Outcome], skips: dict[str, str]) -> dict[str, list[Outcome]]:
    """Sort outcomes: passed, runner skips, upstream skips, and the bad ones (failed, including
    unexpected skips and unexpected successes)."""
    out: dict[str, list[Outcome]] = {"passed": [], "runner-skip": [], "upstream-skip": [], "failed": []}
    for o in outcomes:
        if o.status in ("pass", "expected-failure"):
            out["passed"].append(o)
        elif o.status == "skip" and o.test_id in skips and o.detail == skips[o.test_id]:
            out["runner-skip"].append(o)
        elif o.status == "skip" and o.test_id in UPSTREAM_SKIPS and UPSTREAM_SKIPS[o.test_id] in o.detail:
            out["upstream-skip"].append(o)
        else:
            out["failed"].append(o)
    return out


def _first_line(detail: str) -> str:
    lines = [line for line in detail.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def summarize(outcomes: Sequence[Outcome], skips: dict[str, str], stream: TextIO) -> bool:
    """Print the summary; return True when the run passed."""
    groups = classify(outcomes, skips)
    w = stream.write
    w("\n" + "=" * 78 + "\n")
    w(
        f"ran {len(outcomes)}: passed {len(groups['passed'])}, "
        f"skipped {len(groups['runner-skip']) + len(groups['upstream-skip'])} "
        f"(runner table {len(groups['runner-skip'])}, by the test file {len(groups['upstream-skip'])}), "
        f"failed {len(groups['failed'])}\n"
    )
    for title, key in (
        ("skipped by the runner (CPython internals)", "runner-skip"),
        ("skipped by the test file", "upstream-skip"),
    ):
        if groups[key]:
            w(f"\n{title}:\n")
            for o in groups[key]:
                w(f"  {o.test_id}: {o.detail}\n")
    env = [o for o in outcomes if o.env_changed]
    if env:
        w("\nenvironment changed (test.support saw leftover threads or child processes; a warning):\n")
        for o in env:
            w(f"  {o.test_id}\n")
    if groups["failed"]:
        w("\nFAILED:\n")
        for o in groups["failed"]:
            label = {"skip": "unexpected skip"}.get(o.status, o.status)
            w(f"  {o.test_id} [{label}] {_first_line(o.detail)}\n")
    slow = sorted(outcomes, key=lambda o: o.seconds, reverse=True)[:5]
    w("\nslowest: " + ", ".join(f"{o.test_id} {o.seconds:.1f}s" for o in slow) + "\n")
    ok = not groups["failed"]
    w("OK\n" if ok else "FAILED\n")
    stream.flush()
    return ok


# --------------------------------------------------------------------------- docs


def docs_table(table: dict[str, str]) -> str:
    """``table`` as the markdown table docs/cpython-tests.md holds."""
    rows = ["| Test | Reason |", "| --- | --- |"]
    rows += [f"| `{test_id}` | {reason} |" for test_id, reason in sorted(table.items())]
    if not table:
        rows.append("| *none* | |")
    return "\n".join(rows)


def _read_table(text: str, markers: tuple[str, str]) -> dict[str, str]:
    start, end = markers
    if start not in text or end not in text:
        raise SetupError(f"{DOCS} has no {start} ... {end} block")
    block = text.split(start, 1)[1].split(end, 1)[0]
    table: dict[str, str] = {}
    for line in block.splitlines():
        m = re.fullmatch(r"\|\s*`([^`]+)`\s*\|\s*(.*?)\s*\|", line.strip())
        if m:
            table[m.group(1)] = m.group(2)
    return table


def check_docs(path: pathlib.Path = DOCS) -> list[str]:
    """The differences between the docs' tables and :data:`SKIPS` / :data:`UPSTREAM_SKIPS` (empty: same)."""
    text = path.read_text(encoding="utf-8")
    problems: list[str] = []
    for name, table, markers in (
        ("SKIPS", SKIPS, _SKIP_MARKERS),
        ("UPSTREAM_SKIPS", UPSTREAM_SKIPS, _UPSTREAM_MARKERS),
    ):
        documented = _read_table(text, markers)
        for test_id in sorted(set(table) | set(documented)):
            if test_id not in documented:
                problems.append(f"{name}: {test_id} is not in {path.name}")
            elif test_id not in table:
                problems.append(f"{name}: {path.name} lists {test_id}, the runner does not")
            elif documented[test_id] != table[test_id]:
                problems.append(
                    f"{name}: {test_id}: reasons differ:\n  runner: {table[test_id]}\n  docs:   {documented[test_id]}"
                )
    return problems


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--file", help=f"the CPython test file (default: {DEFAULT_FILE})")
    parser.add_argument("--against", choices=("taskpool", "cf"), default="taskpool", help="executors to test")
    parser.add_argument(
        "--only", action="append", default=[], metavar="TEXT", help="run the tests whose id contains TEXT"
    )
    parser.add_argument("--per-test-timeout", type=float, default=90.0, help="seconds before a test counts as hung")
    parser.add_argument("--max-hangs", type=int, default=3, help="stop the run after this many hung tests")
    parser.add_argument(
        "--no-skips", action="store_true", help="run SKIPS' tests too (does an entry still need to be there?)"
    )
    parser.add_argument("--check-docs", action="store_true", help="compare docs/cpython-tests.md with the tables")
    parser.add_argument("--print-docs", action="store_true", help="print the tables for docs/cpython-tests.md")
    args = parser.parse_args(argv)

    if args.print_docs:
        print(f"{_SKIP_MARKERS[0]}\n{docs_table(SKIPS)}\n{_SKIP_MARKERS[1]}\n")
        print(f"{_UPSTREAM_MARKERS[0]}\n{docs_table(UPSTREAM_SKIPS)}\n{_UPSTREAM_MARKERS[1]}")
        return 0
    try:
        if args.check_docs:
            problems = check_docs()
            for p in problems:
                print(f"error: {p}", file=sys.stderr)
            print(f"{DOCS}: {'differs from' if problems else 'matches'} the runner's tables")
            return 1 if problems else 0
        test_file = find_test_file(args.file)
        if sys.version_info[:2] != (3, 11):
            print(f"warning: the test file is CPython 3.11's, this is Python {sys.version.split()[0]}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="taskpool-cpython-") as tmp:
            mod = load_module(test_file, pathlib.Path(tmp), args.against)
            tests = select(mod)
            skips = SKIPS if args.against == "taskpool" and not args.no_skips else {}
            apply_skips(mod, tests, skips)
            if args.only:
                tests = [t for t in tests if any(s in short_id(t) for s in args.only)]
            print(f"CPython {test_file} against {args.against}: {len(tests)} tests, Python {sys.version.split()[0]}")
            sys.stdout.flush()
            started = time.monotonic()
            outcomes = run(tests, Watchdog(args.per_test_timeout, args.max_hangs, skips))
            ok = summarize(outcomes, skips, sys.stdout)
            print(f"{time.monotonic() - started:.0f} s against {args.against}")
            return 0 if ok else 1
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
