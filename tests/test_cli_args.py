"""Bad numbers and names at the command line and in pool options: a clear error, no harm."""

from __future__ import annotations

import os
import pathlib

import pytest

from taskpool import FunctionPool
from taskpool._cli import main
from taskpool._workers._base import log_path

from .conftest import KINDS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grace", "nan"], "--grace must be a finite number"),
        (["--grace", "inf"], "--grace must be a finite number"),
        (["--grace", "-1"], "--grace must be a finite number"),
        (["--instances", "0"], "--instances must be >= 1"),
        (["--instances", "100000"], "--instances must be >= 1 and <= 1024"),
        (["--restart-delay", "nan"], "delay must be a finite number"),
        (["--restart-backoff", "inf"], "backoff must be a finite number"),
        (["--restart-max-delay", "-3"], "max_delay must be a finite number"),
        (["--restart-limit", "0"], "limit must be None or an int >= 1"),
    ],
)
def test_serve_rejects_bad_numbers_with_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "taskpool.examples.math:add", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("taskpool serve: ")
    assert message in err
    assert "Traceback" not in err


def test_pool_size_has_a_sane_upper_bound() -> None:
    with pytest.raises(ValueError, match=r"pool_size must be an int >= 1 and <= 1024"):
        FunctionPool(10**6, worker="inline")


@pytest.mark.parametrize("name", ["../evil", "../../etc/x", "/abs/name", "..", "a/b\\c", "nul\0byte", ".hidden"])
def test_log_files_stay_inside_log_dir_whatever_the_name(name: str, tmp_path: pathlib.Path) -> None:
    path = log_path(tmp_path, name, 3)
    assert path is not None
    assert os.path.dirname(os.path.realpath(path)) == os.path.realpath(tmp_path)
    assert os.path.basename(path).endswith("-worker-3.log")
    assert not os.path.basename(path).startswith(".")


@pytest.mark.skipif("process" not in KINDS, reason="log files are written for process workers")
@pytest.mark.asyncio
async def test_a_pool_named_with_dots_and_slashes_logs_inside_log_dir(tmp_path: pathlib.Path) -> None:
    logs = tmp_path / "logs"
    async with FunctionPool(1, worker="process", name="../escape", log_dir=logs) as pool:
        await pool.add_task(print, "hello")
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]
    (only,) = logs.iterdir()
    assert "hello" in only.read_text()
