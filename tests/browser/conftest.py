"""Browser fixtures: Debian's Chromium driven by Playwright, against the real demo stack."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

from tests.support import WebServer, demo_stack

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ENV = {"DEMO_CLOCK_SECONDS": "1", "DEMO_JOB_STEPS": "6", "DEMO_JOB_STEP_SECONDS": "0.15"}


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.fail(f"Chromium not found at {CHROMIUM}: `make test` installs Debian's chromium")
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    )
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def stack(redis_url: str, log_dir: Path) -> Iterator[WebServer]:
    """The demo as `make run` runs it: gunicorn, a Celery worker and beat."""
    with demo_stack(redis_url, log_dir, ENV) as web:
        yield web


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile: its own cookies, so its own turbocast session."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.set_default_timeout(15_000)
    yield context
    context.close()
