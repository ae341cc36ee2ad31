"""The public API's types, as a user's type checker sees them (``mypy --strict``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_public_api_types_check_under_mypy_strict() -> None:
    if (
        shutil.which("mypy") is None
        and subprocess.run([sys.executable, "-c", "import mypy"], capture_output=True, check=False).returncode
    ):
        pytest.fail("mypy is part of the test extra: pip install -e '.[test]'")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(HERE / "typecheck" / "api_usage.py")],
        capture_output=True,
        text=True,
        check=False,
        cwd=HERE.parent,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
