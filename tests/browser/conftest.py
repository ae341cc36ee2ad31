"""Fixtures for the status page's tests in a real headless Chromium (``pytest -m browser tests/browser``).

They need the ``playwright`` package (``pip install playwright``; its own browser download is never
used) and Debian's ``chromium`` at ``/usr/bin/chromium`` (or ``$TASKPOOL_CHROMIUM``). Without them the
tests are skipped, unless ``TASKPOOL_BROWSER_REQUIRED=1`` (set by ``.ci/browser``) turns that into a
failure, so CI cannot go green by skipping.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

CHROMIUM = os.environ.get("TASKPOOL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUIRED = os.environ.get("TASKPOOL_BROWSER_REQUIRED") == "1"


def pytest_configure(config: pytest.Config) -> None:
    # pyproject.toml registers it too; registering here keeps --strict-markers happy either way.
    config.addinivalue_line("markers", "browser: runs the status page in a real headless Chromium")


def _missing(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"browser tests required (TASKPOOL_BROWSER_REQUIRED=1) but {why}")
    pytest.skip(why)


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    """A headless Chromium, closed (with Playwright's driver) when the test ends."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


class PageWatch:
    """Collects a page's console errors and uncaught exceptions, to assert there were none."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))

    def _console(self, msg: Any) -> None:
        if msg.type in ("error", "warning"):
            self.errors.append(f"console {msg.type}: {msg.text} ({msg.location})")

    def assert_clean(self) -> None:
        assert self.errors == [], "\n".join(self.errors)
