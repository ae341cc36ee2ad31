"""tests/ray: the Ray kind's own tests (marker ``ray``), on the session's shared local Ray.

They run only when asked (``-m ray``, or ``TASKPOOL_TEST_KINDS`` including ``ray``): the
default ``pytest -q`` never starts Ray. Without Ray installed they are skipped.
"""

from __future__ import annotations

import importlib.util

import pytest

from tests.ray import session


def _asked(config: pytest.Config) -> bool:
    return session.kinds_want_ray() or "ray" in (config.getoption("markexpr", "") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [i for i in items if "tests/ray/" in str(i.path).replace("\\", "/")]
    for item in mine:
        item.add_marker(pytest.mark.ray)
        if not _asked(config):
            item.add_marker(pytest.mark.skip(reason="Ray tests run with -m ray or TASKPOOL_TEST_KINDS=ray"))
        elif importlib.util.find_spec("ray") is None:
            item.add_marker(pytest.mark.skip(reason="Ray is not installed (pip install 'taskpool[ray]')"))


@pytest.fixture(scope="session", autouse=True)
def ray_address(request: pytest.FixtureRequest) -> str | None:
    """The shared local Ray's GCS address (started before the first test of this directory)."""
    if not _asked(request.config) or importlib.util.find_spec("ray") is None:
        return None
    return session.start()
