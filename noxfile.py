"""Development sessions: ``nox -s tests lint typing docs benchmarks``.

``nox`` with no arguments runs tests, lint, typing and docs; the benchmarks run only on
request (``nox -s benchmarks``). Every session uses the interpreter nox runs on (Python 3.11+);
pick another with ``nox -s tests --force-python 3.12`` (pip refuses a Python older than 3.11,
as ``requires-python`` says).
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lint", "typing", "docs"]

LINT_PATHS = ("src", "tests", "benchmarks")


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


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[lint]")
    session.run("mypy", "--strict", "src/taskpool")


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
