"""A real headless Chromium for tests of web pages: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download is not available here, so it launches the system binary
through ``executable_path``. The flags keep Chromium off the network (this machine refuses
outside connections, and Chromium's background services would try them at every start).
A test that asks for ``chromium`` is skipped, with the reason, only where the binary is missing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

DOCS = Path(__file__).resolve().parents[1] / "docs"

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    return os.environ.get("FARTHING_CHROMIUM") or shutil.which("chromium")


# Module scope, not session: while Playwright's sync API runs, its event loop counts as
# running in the main thread, and every later ``asyncio.run`` in the same test process
# (another module's test on that xdist worker) fails with "Cannot run the event loop while
# another loop is running". Stopping it when the module ends gives the loop back.
@pytest.fixture(scope="module")
def playwright_session() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def chromium(playwright_session: Playwright) -> Iterator[Browser]:
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (`make sysdeps` installs it)")
    browser = playwright_session.chromium.launch(
        executable_path=path, headless=True, args=CHROMIUM_FLAGS
    )
    yield browser
    browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context()
    yield context.new_page()
    context.close()


def screenshot(page: Page, name: str, folder: Path) -> Path:
    """A full-page screenshot, kept in ``folder``; with ``FARTHING_SCREENSHOTS=1`` also
    written over ``docs/<name>`` (the pictures the README and docs show), so an ordinary test
    run leaves the work tree as it was."""
    taken = folder / name
    page.screenshot(path=str(taken), full_page=True)
    if os.environ.get("FARTHING_SCREENSHOTS") == "1":
        shutil.copyfile(taken, DOCS / name)
    return taken
