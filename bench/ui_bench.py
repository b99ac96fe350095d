"""How fast the dashboard answers on the server: threshold-slider previews and page switches.

    python bench/ui_bench.py [--model sample:teacher] [--runs 30] [--results N]

Drives app.py through Streamlit's AppTest (the script runs in this process, as on the server, without
a browser or the websocket): one session on the model, caches warmed by a first pass that is not timed,
then the wall time of ``AppTest.run()`` after moving the threshold slider on Prune, and after switching
to each page. Browser rendering and network are not included; this is the part a slow script adds.
The Trade-offs page is timed with ``--results`` finished rows in a fresh results history.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import streamlit  # noqa: E402
import torch  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = str(ROOT / "app.py")
PAGES = ("pages/model.py", "pages/prune.py", "pages/quantize.py", "pages/distill.py", "pages/tradeoffs.py",
         "pages/export.py")
BUDGET_MS = 200.0


def timed_run(app: AppTest) -> float:
    """Milliseconds of one script run (the app raising fails the benchmark rather than timing an error)."""
    started = time.perf_counter()
    app.run()
    elapsed = 1000 * (time.perf_counter() - started)
    if app.exception:
        raise SystemExit(f"the app raised: {app.exception[0].value}")
    return elapsed


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def fill_history(model: str, count: int) -> None:
    """``count`` finished result rows in the (fresh) results history, as the Trade-offs page would list them."""
    from core.evaluate import EvalSpec
    from core.models import load
    from core.recipe import Recipe, Step, pipeline
    from core.store import ResultStore, default_results_dir

    store, base = ResultStore(default_results_dir()), load(model)
    for index in range(count):
        sparsity = round(0.1 + 0.8 * index / max(count - 1, 1), 2)
        recipe = Recipe(model=model, steps=(Step("prune", {"method": "magnitude", "sparsity": sparsity}),),
                        evaluation=EvalSpec(max_windows=1, seqlen=32, latency=False))
        pipeline.run(recipe, store, base=base)


def slider_timings(app: AppTest, runs: int) -> list[float]:
    """Move the threshold slider across its range, ``runs`` times; the first two moves are warm-up."""
    app.switch_page("pages/prune.py").run()
    app.radio(key="prune_amount_mode").set_value("threshold").run()
    timings = []
    for index in range(runs + 2):
        slider = next(s for s in app.slider if s.key.startswith("prune_threshold"))
        steps = round(slider.max / slider.step)
        slider.set_value(slider.step * (1 + (index * 7) % steps))  # a different value every time
        timings.append(timed_run(app))
    return timings[2:]


def page_timings(app: AppTest, runs: int) -> dict[str, list[float]]:
    """Switch to every page in turn, ``runs`` rounds after one warm-up round."""
    timings: dict[str, list[float]] = {page: [] for page in PAGES}
    for round_index in range(runs + 1):
        for page in PAGES:
            app.switch_page(page)
            elapsed = timed_run(app)
            if round_index:
                timings[page].append(elapsed)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sample:teacher")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per measurement (after warm-up)")
    parser.add_argument("--results", type=int, default=20, help="finished results in the history for Trade-offs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["SQUEEZELAB_RESULTS_DIR"] = tempfile.mkdtemp(prefix="ui-bench-results-")
    fill_history(args.model, args.results)

    load_before = os.getloadavg()[0]
    app = AppTest.from_file(APP, default_timeout=120)
    app.query_params["model"] = args.model
    started = time.perf_counter()
    app.run()
    first_s = time.perf_counter() - started
    rows = [("Prune: move the threshold slider", slider_timings(app, args.runs))]
    rows += [(f"switch to {page}", values) for page, values in page_timings(app, args.runs).items()]

    print(f"model {args.model}, {args.results} results in the history; device cpu ({platform.machine()}), "
          f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"streamlit {streamlit.__version__}, Python {platform.python_version()}")
    print(f"machine load (1-min average) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after: figures above "
          f"~{os.cpu_count()} are inflated by other processes sharing the cores")
    print(f"server side: wall time of AppTest.run() (the whole script: app.py, sidebar, page), warm caches, "
          f"{args.runs} timed runs per row after warm-up; first run (model load, cold caches) {first_s:.1f} s")
    print("| action | p50 ms | p90 ms | max ms | within 200 ms (p90) |")
    print("|---|---|---|---|---|")
    for label, values in rows:
        p50, p90 = statistics.median(values), percentile(values, 90)
        print(f"| {label} | {p50:.0f} | {p90:.0f} | {max(values):.0f} | {'yes' if p90 <= BUDGET_MS else 'NO'} |")


if __name__ == "__main__":
    main()
