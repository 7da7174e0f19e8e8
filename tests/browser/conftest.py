"""Real-browser fixtures: Debian's Chromium driven by Playwright against a live server on the tiny checkpoint.

Playwright is the PyPI ``playwright`` package (the ``browser`` extra) with ``executable_path`` set to
the system Chromium; ``playwright install`` is never run, nothing is downloaded. Screenshots go to
tests/artifacts/browser/ (ignored by git), one or more per test.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from engine.offline.tiny import TinySpec, make_tiny

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync"]
WAIT_MS = 600_000  # how long an element may take to appear on a loaded machine; not a performance bound


def _live_server_helpers():
    """start_server/stop_server and the key from the server tests' conftest, loaded by path (both are 'conftest')."""
    path = Path(__file__).resolve().parents[1] / "server" / "conftest.py"
    spec = importlib.util.spec_from_file_location("live_server_helpers", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


LIVE = _live_server_helpers()


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed: pip install playwright (the 'browser' extra); no browser download needed"
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM}: apt-get install -y --no-install-recommends chromium"
    return None


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny"), TinySpec())


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless system Chromium; skips (before any server starts) where it or Playwright is missing."""
    if reason := _missing():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def live(browser, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A server of its own, stopped with the module, so it never runs beside the server tests' one."""
    server = LIVE.start_server(tiny_dir, tmp_path_factory.mktemp("logs") / "server.log")
    yield server
    LIVE.stop_server(server)


@pytest.fixture
def api_key() -> str:
    return LIVE.API_KEY


@dataclass
class PageWatch:
    """What the page did besides rendering: console errors and warnings, uncaught errors, hosts contacted."""

    page: object
    origin: str
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def watch(browser, live, request) -> Iterator[PageWatch]:
    from playwright.sync_api import expect

    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(live.url))
    w = PageWatch(page, origin)
    page.on("console", lambda m: m.type in ("error", "warning") and w.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: w.errors.append(str(e)))
    page.on("request", lambda r: r.url.startswith((origin, "data:", "blob:")) or w.foreign.append(r.url))
    page.goto(f"{live.url}/")
    # A locator wait, not wait_for_function: that one polls by evaluating a string in the page, which the
    # playground's CSP (script-src 'self') refuses whenever the first check finds the model name not yet shown.
    expect(page.locator("#model")).not_to_have_text("…", timeout=WAIT_MS)
    yield w
    w.shot(f"{request.node.name}-end")
    context.close()
