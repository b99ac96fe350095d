"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

Run with `pytest -m browser tests/test_browser.py` (needs `apt-get install chromium` and the
`playwright` package; never `playwright install`). Screenshots of every page land in
docs/screenshots/ for the README.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "docs" / "screenshots"
PAGES = {"model": "", "prune": "prune", "quantize": "quantize", "distill": "distill", "tradeoffs": "tradeoffs",
         "export": "export"}  # screenshot name -> URL path (the Model page is the default, at the root)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "SQUEEZELAB_RESULTS_DIR": str(tmp_path_factory.mktemp("results")), "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.address", "127.0.0.1",
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("the app did not answer its health check within 60 s")
    yield url
    server.terminate()
    server.wait(timeout=20)


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        yield tab
        browser.close()


def _open(page, url: str) -> None:
    page.goto(url)
    # The app's own navigation (not Streamlit's file list) and the page's title mean the run got through.
    page.get_by_role("link", name="Trade-offs").wait_for(timeout=120_000)
    page.locator("h1").first.wait_for(timeout=120_000)
    # Then wait for the script run to finish: no spinner, no running indicator (loading a model takes a while).
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stSpinner\"]')"
        " && !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=180_000)
    page.wait_for_timeout(4000)  # charts draw after the run ends


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_without_an_exception(page, app_url, name):
    _open(page, f"{app_url}/{PAGES[name]}")
    assert page.locator("[data-testid='stException']").count() == 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
