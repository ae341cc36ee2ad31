"""The public API's types, as a user's type checker sees them (``mypy --strict``).

``typecheck/api_usage.py`` holds the claims: ``assert_type`` for what a call gives, and
``# type: ignore[code]`` for a call a checker must reject. An ignore that suppresses nothing
fails the check (``--warn-unused-ignores``), so a negative case that stops being an error is
caught; the second test proves that the same mypy invocation does fail on one. (pyright
checks the same file in the ``typing-pyright`` nox session.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def mypy(path: Path) -> subprocess.CompletedProcess[str]:
    """``mypy --strict`` on ``path``, from the repository root (so its config applies)."""
    if (
        shutil.which("mypy") is None
        and subprocess.run([sys.executable, "-c", "import mypy"], capture_output=True, check=False).returncode
    ):
        pytest.fail("mypy is part of the test extra: pip install -e '.[test]'")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",  # part of --strict; spelled out: the negative cases rely on it
            "--no-incremental",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE.parent,
        timeout=300,
    )


@pytest.mark.slow
def test_public_api_types_check_under_mypy_strict() -> None:
    result = mypy(HERE / "typecheck" / "api_usage.py")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_an_ignore_that_suppresses_nothing_fails_the_check(tmp_path: Path) -> None:
    # A negative case that the API stopped rejecting must fail the test above.
    sample = tmp_path / "unused_ignore.py"
    sample.write_text(
        "from taskpool import FunctionPool\n\n\n"
        "def add(a: int, b: int) -> int:\n"
        "    return a + b\n\n\n"
        "def use(pool: FunctionPool) -> None:\n"
        "    pool.add_task(add, 1, 2)  # type: ignore[arg-type]\n"
    )
    result = mypy(sample)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Unused "type: ignore" comment' in result.stdout, result.stdout
