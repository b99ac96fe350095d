"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

`make test` runs these where /usr/bin/chromium exists (`.ci/run` installs it with apt-get) and
skips them with the reason otherwise; never `playwright install`. One Streamlit server on
127.0.0.1 (a free port, an empty results history) and one browser serve the whole module, and the
tests run in file order: the slider preview, a prune job on the sample teacher and its point on
Trade-offs, the Export download, a small sweep and its front, then every page with its screenshot in
docs/screenshots/ (which the README shows). About two minutes on two CPU cores.

Every request the page makes is recorded: a test fails when the page asked any host but the app's own
server (127.0.0.1:<port>), since an offline user would see that request fail.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "docs" / "screenshots"
# screenshot name -> URL path (the Model page is the default, at the root)
PAGES = {"model": "", "prune": "prune", "quantize": "quantize", "distill": "distill", "tradeoffs": "tradeoffs",
         "export": "export", "sweep": "sweep"}
RUN_TIMEOUT_MS = 240_000  # one script run; the first loads the model
JOB_TIMEOUT_MS = 300_000  # a magnitude job with 2 windows of 64 tokens takes seconds; the margin is for a busy machine

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"needs Debian's Chromium at {CHROMIUM} (apt-get install chromium); .ci/run installs it"),
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
         "--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
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
def requested() -> list[str]:
    """Every URL the browser asked for (documents, scripts, fonts, images, fetches, web sockets), in order."""
    return []


@pytest.fixture(scope="module")
def page(app_url, requested):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        context.on("request", lambda request: requested.append(request.url))  # every tab, every frame
        tab = context.new_page()
        tab.on("websocket", lambda socket: requested.append(socket.url))
        tab.set_default_timeout(RUN_TIMEOUT_MS)
        yield tab
        browser.close()


def foreign(urls: list[str], app_url: str) -> list[str]:
    """The URLs of ``urls`` that leave this machine's app server (inline data: and blob: URLs never do)."""
    own = urlparse(app_url).netloc
    return [url for url in urls if urlparse(url).scheme not in ("data", "blob") and urlparse(url).netloc != own]


@pytest.fixture(autouse=True)
def nothing_but_the_apps_server(request, app_url):
    """After each test: the page asked no host but the app's own (an offline user would see a failed request)."""
    if "page" not in request.fixturenames:
        yield
        return
    seen = request.getfixturevalue("requested")
    before = len(seen)
    yield
    assert foreign(seen[before:], app_url) == [], "the page requested hosts other than the app's own server"


@pytest.fixture(scope="module")
def finished_job() -> dict[str, str]:
    """What the prune job test leaves for the later ones: its result id."""
    return {}


# ---- helpers ------------------------------------------------------------------------------------

def _settle(page) -> None:
    """Wait until the script run is over (no spinner, no running indicator) and every chart is drawn."""
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stSpinner\"]')"
        " && !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && [...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')]"
        "      .every(chart => chart.querySelector('.main-svg'))", timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(500)  # the last deltas and the charts' transitions


def _open(page, url: str) -> None:
    """Load ``url`` in a new session and wait for the app's own navigation, the page's title and the run's end."""
    page.goto(url)
    page.get_by_role("link", name="Trade-offs").wait_for()  # app.py's st.navigation, not Streamlit's file list
    page.locator("h1").first.wait_for()
    _settle(page)


def _go_to(page, title: str) -> None:
    """Switch page through the sidebar, in the same session (sidebar settings and the job are kept)."""
    page.get_by_role("link", name=title, exact=True).click()
    page.locator("h1", has_text=title).wait_for()
    _settle(page)


def _no_exception(page) -> None:
    shown = page.locator("[data-testid='stException']")
    assert shown.count() == 0, shown.first.inner_text()


def _metric(page, label: str):
    return page.locator("[data-testid='stMetric']", has_text=label).locator("[data-testid='stMetricValue']")


def _chart_data(page, index: int = 0) -> list[dict]:
    """The traces of the index-th Plotly chart on the page (what Plotly drew), once it is drawn."""
    page.locator("[data-testid='stPlotlyChart']").nth(index).locator(".main-svg").first.wait_for()
    return page.evaluate(
        "i => document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .js-plotly-plot')[i].data"
        ".map(t => ({name: t.name, x: t.x, y: t.y, customdata: t.customdata}))", index)


def _set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    page.wait_for_function("([l, v]) => document.querySelector(`input[aria-label=\"${l}\"]`)?.value === v",
                           arg=[label, str(value)])
    _settle(page)


# ---- the tests, in the order they run -------------------------------------------------------------

def test_the_threshold_slider_moves_the_live_preview(page, app_url) -> None:
    _open(page, f"{app_url}/prune")
    page.get_by_text("by threshold", exact=True).click()
    sparsity = _metric(page, "Sparsity at this threshold")
    sparsity.wait_for()
    _settle(page)
    before, bars_before = sparsity.inner_text(), _chart_data(page)[0]["y"]
    assert 45 <= float(before.rstrip("%")) <= 55, before  # the slider starts at the median |w|

    slider = page.locator("[data-testid='stSlider']", has_text="Threshold").get_by_role("slider")
    slider.focus()
    slider.press("PageUp")  # a tenth of the range up: more weights fall below the threshold
    page.wait_for_function(  # the server reran the page with the new threshold
        "before => [...document.querySelectorAll('[data-testid=\"stMetric\"]')].some(m =>"
        " m.innerText.includes('Sparsity at this threshold') && !m.innerText.includes(before))", arg=before)
    _settle(page)
    page.wait_for_function(  # the bars are redrawn after the metric: wait for the chart, not only the number
        "before => JSON.stringify(document.querySelectorAll('[data-testid=\"stPlotlyChart\"] .js-plotly-plot')[0]"
        ".data[0].y) !== JSON.stringify(before)", arg=bars_before)
    after, bars_after = sparsity.inner_text(), _chart_data(page)[0]["y"]
    _no_exception(page)
    assert float(after.rstrip("%")) > float(before.rstrip("%")), (before, after)
    assert bars_after != bars_before and all(a >= b for a, b in zip(bars_after, bars_before, strict=True))


def test_a_prune_job_finishes_and_shows_on_tradeoffs(page, app_url, finished_job) -> None:
    _open(page, f"{app_url}/prune")
    # The sidebar's evaluation, tiny: 2 windows of 64 tokens and no speed measurement, so the job takes seconds.
    _set_number(page, "Window length (seqlen)", 64)
    _set_number(page, "Windows (0 = every window)", 2)
    page.get_by_text("Measure speed (prefill, decode, peak memory)").click()
    _settle(page)
    for kept in ("eval_seqlen=64", "eval_windows=2", "eval_latency=false"):  # the URL keeps the sidebar's settings
        assert kept in page.url, page.url
    _open(page, page.url)  # a reload: a new session on the same URL
    assert page.get_by_label("Window length (seqlen)", exact=True).input_value() == "64"
    assert page.get_by_text("seqlen 64, at most 2 windows (sidebar settings)").is_visible()

    page.get_by_role("button", name="Run", exact=True).click()  # magnitude, target sparsity 50%: the defaults
    done = page.get_by_text(re.compile(r"Finished in [\d.]+ s · result \S+"))
    done.wait_for(timeout=JOB_TIMEOUT_MS)
    _settle(page)
    _no_exception(page)
    assert "job=" in page.url  # a reload reconnects to the job
    result_id = re.search(r"result (\S+)", done.inner_text()).group(1)
    finished_job["result_id"] = result_id
    assert _metric(page, "Zeros").inner_text().endswith("%")

    _go_to(page, "Trade-offs")
    _no_exception(page)
    points = {point[0]: (x, y) for trace in _chart_data(page) for point, x, y
              in zip(trace["customdata"] or [], trace["x"], trace["y"], strict=False)}
    assert result_id in points, f"result {result_id} is not on the chart: {sorted(points)}"
    x_mb, perplexity = points[result_id]
    assert x_mb > 0 and perplexity > 1
    with page.expect_download() as download:  # the table's CSV, made when clicked
        page.get_by_role("button", name="Download every result as CSV").click()
    assert result_id in Path(download.value.path()).read_text()


def test_export_downloads_a_zip_with_the_weights(page, app_url, finished_job, tmp_path) -> None:
    if "result_id" not in finished_job:
        pytest.skip("needs the result of test_a_prune_job_finishes_and_shows_on_tradeoffs, which did not finish")
    _go_to(page, "Export")
    result_id = finished_job["result_id"]
    picker = page.locator("[data-testid='stSelectbox']", has_text="Result")
    if result_id not in picker.inner_text():  # the newest result comes first; pick the prune job's explicitly
        picker.click()
        page.get_by_role("option", name=re.compile(re.escape(result_id))).click()
        _settle(page)
    format_radio = page.locator("[data-testid='stRadio']", has_text="Format")
    format_radio.get_by_text(re.compile("^Hugging Face folder")).click()  # the HF format: config.json + safetensors
    _settle(page)
    page.get_by_role("button", name="Export", exact=True).click()
    download_button = page.get_by_role("button", name="Download zip", exact=True)
    download_button.wait_for(timeout=JOB_TIMEOUT_MS)
    _settle(page)
    _no_exception(page)
    assert _metric(page, "Reload check").inner_text() == "passed"

    with page.expect_download() as download:
        download_button.click()
    archive = tmp_path / download.value.suggested_filename
    download.value.save_as(archive)
    assert archive.suffix == ".zip"
    with zipfile.ZipFile(archive) as opened:
        assert opened.testzip() is None  # every member's CRC checks out
        sizes = {Path(info.filename).name: info.file_size for info in opened.infolist()}
    assert sizes.get("config.json", 0) > 0, sorted(sizes)
    weights = {name: size for name, size in sizes.items() if name.endswith((".safetensors", ".bin", ".gguf"))}
    assert weights and all(size > 0 for size in weights.values()), sorted(sizes)


def test_a_sweep_fills_the_front_and_names_the_best_trial(page, app_url) -> None:
    _open(page, f"{app_url}/sweep")
    _set_number(page, "Window length (seqlen)", 64)
    _set_number(page, "Windows (0 = every window)", 2)
    page.get_by_text("Measure speed (prefill, decode, peak memory)").click()
    _settle(page)
    plan = page.locator("[data-testid='stAlertContentInfo']").first.inner_text()
    assert re.match(r"Sweep \S+: 3 trials", plan), plan  # the base and RTN at 4 and 8 bits

    page.get_by_role("button", name="Run sweep", exact=True).click()
    best = page.get_by_text(re.compile(r"Best acceptable trial: \S+"))
    best.wait_for(timeout=JOB_TIMEOUT_MS)
    _settle(page)
    _no_exception(page)
    best_id = re.search(r"Best acceptable trial: (\S+)", best.inner_text()).group(1)
    traces = {trace["name"]: trace for index in range(page.locator("[data-testid='stPlotlyChart']").count())
              for trace in _chart_data(page, index) if trace["name"]}
    front = [point[0] for point in traces["Pareto front"]["customdata"]]
    assert best_id in front and len(front) >= 1
    assert [point[0] for point in traces["best acceptable"]["customdata"]] == [best_id]
    assert "base model" in traces and all(y > 1 for y in traces["Pareto front"]["y"])


def test_the_plan_page_builds_an_atlas_moves_the_budget_and_runs_the_plan(page, app_url) -> None:
    # a tiny calibration (8 windows of 64 tokens) and evaluation (2 windows of 64 tokens): seconds a job
    _open(page, f"{app_url}/plan?eval_seqlen=64&eval_windows=2&eval_latency=false")
    _set_number(page, "Samples", 8)
    _set_number(page, "Tokens each", 64)
    page.get_by_role("button", name="Build the atlas", exact=True).click()
    page.get_by_text(re.compile(r"^Atlas \S+: 42 layers x 2 options")).wait_for(timeout=JOB_TIMEOUT_MS)
    _settle(page)
    _no_exception(page)
    bits = _metric(page, "Bits per weight (planned layers)")
    before, heat = bits.inner_text(), _chart_data(page)
    assert heat[1]["name"] == "chosen" and len(heat[1]["x"]) == 42  # the plan circled on the atlas

    slider = page.locator("[data-testid='stSlider']", has_text="average bits per weight").get_by_role("slider")
    slider.focus()
    slider.press("PageUp")  # a tenth of the range more: more layers get the wider option
    page.wait_for_function(
        "before => [...document.querySelectorAll('[data-testid=\"stMetric\"]')].some(m =>"
        " m.innerText.includes('Bits per weight (planned layers)') && !m.innerText.includes(before))", arg=before)
    _settle(page)
    assert float(bits.inner_text()) > float(before)

    page.get_by_role("button", name="Run this plan", exact=True).click()
    page.get_by_text(re.compile(r"Finished in [\d.]+ s · result \S+")).wait_for(timeout=JOB_TIMEOUT_MS)
    page.get_by_text("Planned runs: predicted and measured", exact=True).wait_for()
    _settle(page)
    _no_exception(page)
    note = page.get_by_text(re.compile(r"^Predicted [\d.]+, measured [\d.]+")).inner_text()
    guess, measured = (float(v) for v in re.match(r"Predicted ([\d.]+), measured ([\d.]+)", note).groups())
    assert guess > 1 and measured > 1
    runs = _chart_data(page, 1)[1]  # the planned runs: predicted (x) against measured (y)
    assert runs["x"] == [pytest.approx(guess, abs=1e-3)] and runs["y"] == [pytest.approx(measured, abs=1e-3)]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "plan.png"), full_page=True)


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_and_is_photographed(page, app_url, name) -> None:
    """Each page in a fresh session; its screenshot (after the job above, so Trade-offs has points) for the README."""
    _open(page, f"{app_url}/{PAGES[name]}")
    if name == "prune":  # show the live preview in the README's picture
        page.get_by_text("by threshold", exact=True).click()
        _metric(page, "Sparsity at this threshold").wait_for()
        _settle(page)
    if name == "sweep":  # show the sweep's front (below the form) in the README's picture
        page.locator("[data-testid='stPlotlyChart']").first.scroll_into_view_if_needed()
        _settle(page)
    _no_exception(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)



def test_the_page_asked_nothing_but_the_apps_own_server(page, app_url, requested) -> None:
    """Over the whole session (every page, a job, a download): only 127.0.0.1:<port>, and the check can fail."""
    assert any(urlparse(url).netloc == urlparse(app_url).netloc for url in requested)  # it recorded the session
    assert any(url.startswith("ws") for url in requested)  # web sockets too
    assert foreign(requested, app_url) == []
    offline_breakers = ["https://fonts.gstatic.com/s/i/short-term/release/materialsymbolsrounded/memory/default/24px.svg",
                        "http://127.0.0.1:1/", f"{app_url}/_stcore/health", "data:image/svg+xml,<svg/>"]
    assert foreign(offline_breakers, app_url) == offline_breakers[:2]
