"""Development sessions: ``nox -s tests lint typing-mypy typing-pyright docs benchmarks``.

``nox`` with no arguments runs tests, lint, both typing sessions and docs; the benchmarks run
only on request (``nox -s benchmarks``). ``nox -s typing`` runs both type checkers in one
session (``nox -t typing`` runs the two sessions). Every session uses the interpreter nox runs
on (Python 3.11+); pick another with ``nox -s tests --force-python 3.12`` (pip refuses a Python
older than 3.11, as ``requires-python`` says).

The typing gates, like trio's and structlog's, are one session per checker, each failing on
its own:

- ``typing-mypy``: ``mypy --strict`` on the package and on ``tests/typecheck/api_usage.py``
  (the public API as a user's code calls it).
- ``typing-pyright``: pyright (strict, set in the file) on the same usage file, and
  ``pyright --verifytypes``: every public name of the published package must have a
  known type (100 % type completeness; the report lists each gap).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typing-mypy", "typing-pyright", "docs"]

LINT_PATHS = ("src", "tests", "benchmarks", "noxfile.py")
#: The public API as a user's code calls it; every claim in it is checked by both checkers.
API_USAGE = "tests/typecheck/api_usage.py"


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (extra arguments go to pytest: ``nox -s tests -- -k events``)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff: lint rules and formatting, checked, never rewritten."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", *LINT_PATHS)
    session.run("ruff", "format", "--check", *LINT_PATHS)


def _mypy(session: nox.Session) -> None:
    session.run("mypy", "--strict", "src/taskpool")
    session.run("mypy", "--strict", "--warn-unused-ignores", API_USAGE)


def _pyright(session: nox.Session) -> None:
    session.run("pyright", "--version")
    session.run("pyright", API_USAGE)
    # Installed editable: verifytypes reads the package the session's Python imports.
    session.run("pyright", "--verifytypes", "taskpool", "--ignoreexternal")


@nox.session(name="typing-mypy", tags=["typing"])
def typing_mypy(session: nox.Session) -> None:
    """mypy --strict on the package and on the API usage file (an unused ignore fails it)."""
    session.install("-e", ".[lint,test,ray]")  # test, ray: the optional parts the package imports (web, otel, ray...)
    _mypy(session)


@nox.session(name="typing-pyright", tags=["typing"])
def typing_pyright(session: nox.Session) -> None:
    """pyright on the API usage file, and ``pyright --verifytypes taskpool``."""
    session.install("-e", ".[lint,test,ray]")
    _pyright(session)


@nox.session
def typing(session: nox.Session) -> None:
    """Both type checkers in one session (what ``typing-mypy`` and ``typing-pyright`` run)."""
    session.install("-e", ".[lint,test,ray]")
    _mypy(session)
    _pyright(session)


# Fails when a public name has no entry in the API reference page.
CHECK_REFERENCE = """
import pathlib, sys, taskpool
page = pathlib.Path("docs/reference.md").read_text()
missing = [n for n in taskpool.__all__ if f"::: taskpool.{n}\\n" not in page]
sys.exit(f"docs/reference.md lacks: {', '.join(missing)}" if missing else 0)
"""


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into ``site/``; any warning fails the build."""
    session.install("-e", ".[docs]")
    session.run("python", "-c", CHECK_REFERENCE)
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Smoke-run the benchmarks (small sizes); ``nox -s benchmarks -- --peers loky`` passes options on."""
    session.install("-e", ".[benchmarks]")
    session.run("python", "-m", "benchmarks.run", "--quick", *session.posargs)
