"""The tables of ``bench/plan_bench.py`` (from the rows it saved), the Plan slider's cost on a cached atlas, and
the Plan page's script run after a slider move (AppTest)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench.common import step_wall_s
from bench.plan_bench import ATLAS_JOBS, PLAN_JOBS, SPARSITIES


def ppl(row: dict | None) -> str:
    if not row or row.get("perplexity") is None:
        return "-"
    low, high = row.get("perplexity_ci_low"), row.get("perplexity_ci_high")
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{row['perplexity']:.2f}{interval}"


def quantized_bits(row: dict) -> float:
    """Stored bits per weight of the block linears (everything else is fp32: 4 bytes a parameter)."""
    layers = (row.get("details", {}).get("steps") or [{}])[0].get("layers") or []
    quantized = sum(layer["shape"][0] * layer["shape"][1] for layer in layers)
    return 8 * (row["size_bytes"] - 4 * (row["params"] - quantized)) / quantized


def plan_prediction(row: dict) -> dict | None:
    """The planner's prediction stored in the planned step's recipe (None for other jobs)."""
    import yaml

    steps = (yaml.safe_load(row["recipe"]) or {}).get("steps") or []
    planned = next((list(s.values())[0].get("planned") for s in steps if list(s.values())[0].get("planned")), None)
    return planned["predicted"] if planned else None


def cross_spearman(rows: dict, method: str, cache: Path) -> dict | None:
    """Rank agreement of the proxy atlas's costs with the measured atlas's KL (the same layers, options, windows)."""
    from core.plan.atlas import _rank_agreement
    from core.plan.cache import load_atlas

    proxy, measured = rows.get(f"atlas-{method}-proxy"), rows.get(f"atlas-{method}-measured")
    if not proxy or not measured:
        return None
    a, b = load_atlas(proxy["cache"], proxy["key"]), load_atlas(measured.get("cache", cache), measured["key"])
    return _rank_agreement(a.proxy, b.kl) if a is not None and b is not None else None


def atlas_table(rows: dict, cache: Path) -> str:
    lines = ["| atlas | held-out windows x tokens | gradients s | statistics s | solves s | measuring s | total s | "
             "Spearman proxy vs KL (all cells / per option, mean) |", "|---|---|---|---|---|---|---|---|"]
    for name in ATLAS_JOBS:
        row = rows.get(name)
        if not row:
            continue
        t, rho = row["timings"], row.get("spearman")
        if rho is None and name.endswith("-proxy"):
            rho = cross_spearman(rows, name.split("-")[1], cache)
        rank = f"{rho['all']:.3f} / {rho['per_option_mean']:.3f}" if rho else "-"
        tokens = row.get("heldout_tokens") or row.get("seqlen") or 512
        lines.append(f"| {name} | {row['heldout']} x {tokens} | {t.get('gradients_s', 0):.0f} | "
                     f"{t['statistics_s']:.0f} | {t['solve_s']:.0f} | {t['measure_s']:.0f} | {t['total_s']:.0f} | "
                     f"{rank} |")
    return "\n".join(lines)


def comparison_table(rows: dict, base: float) -> str:
    lines = ["| method | width | job | perplexity [95% CI] | predicted | weights in memory MB | bits/weight "
             "(block linears) |", "|---|---|---|---|---|---|---|"]
    for method in ("rtn", "gptq"):
        for lo, hi, avg in ((3, 4, "3.5"), (2, 3, "2.5")):
            for name in (f"{method}-w{lo}", f"{method}-w{hi}", f"{method}-ends-{lo}{hi}", f"{method}-attn-{lo}{hi}",
                         f"{method}-plan-{avg}"):
                row = rows.get(name)
                if not row:
                    continue
                guess = plan_prediction(row)
                guess_text = f"{base * guess['perplexity_ratio']:.2f}" if guess and base else "-"
                lines.append(f"| {method} | {avg} | {name} | {ppl(row)} | {guess_text} | {row['size_bytes'] / 1e6:.3f} "
                             f"| {quantized_bits(row):.4f} |")
    return "\n".join(lines)


def prediction_table(rows: dict, base: float) -> str:
    from core.plan.proxy import spearman

    lines = ["| job | budget (bits/weight) | predicted | measured | relative error |", "|---|---|---|---|---|"]
    guesses, measured = [], []
    for name in PLAN_JOBS:
        row = rows.get(name)
        guess = plan_prediction(row) if row else None
        if not guess:
            continue
        value = base * guess["perplexity_ratio"]
        guesses.append(value)
        measured.append(row["perplexity"])
        lines.append(f"| {name} | {guess['avg_bits']:.3f} | {value:.2f} | {ppl(row)} | "
                     f"{(value - row['perplexity']) / row['perplexity']:+.1%} |")
    if len(guesses) >= 2:
        worst = max(abs(g - m) / m for g, m in zip(guesses, measured, strict=True))
        lines.append(f"\n{len(guesses)} budgets: largest relative error {worst:.1%}, Spearman(predicted, measured) "
                     f"{spearman(guesses, measured):.3f}")
    return "\n".join(lines)


def simple_table(rows: dict, names: list[str]) -> str:
    lines = ["| job | perplexity [95% CI] | compress wall s | peak RSS MB |", "|---|---|---|---|"]
    for name in names:
        row = rows.get(name)
        if row:
            lines.append(f"| {name} | {ppl(row)} | {step_wall_s(row):.0f} | {row.get('peak_rss_bytes', 0) / 1e6:.0f} |")
    return "\n".join(lines)


def slider_timing(rows: dict, cache: Path) -> str:
    """What a move of the Plan page's slider costs on the RTN atlas: the planner's table (once), one plan, the
    heatmap with the plan circled (median of 50 budgets across the range; this process, 2 threads)."""
    import statistics

    from core.plan.cache import load_atlas
    from core.plan.menu import Budget
    from core.plan.planner import Planner
    from ui.planning import atlas_figure, budget_range

    row = rows.get("atlas-rtn-measured")
    atlas = load_atlas(cache, row["key"]) if row else None
    if atlas is None:
        return "slider: no cached RTN atlas"
    started = time.perf_counter()
    planner = Planner(atlas, "measured")
    planner.table("bytes")
    table_s = time.perf_counter() - started
    low, high = budget_range(planner, "avg_bits")
    plan_ms, figure_ms = [], []
    for value in [low + (high - low) * i / 49 for i in range(50)]:
        started = time.perf_counter()
        plan = planner.plan(Budget("avg_bits", value))
        plan_ms.append(1000 * (time.perf_counter() - started))
        started = time.perf_counter()
        atlas_figure(atlas, "measured", [atlas.menu.options.index(o) for o in plan.options])
        figure_ms.append(1000 * (time.perf_counter() - started))
    return (f"slider (RTN atlas, {len(atlas.layers)} layers x {len(atlas.menu.options)} options): knapsack table "
            f"{1000 * table_s:.0f} ms once ({planner.table('bytes').capacity_units + 1} cells per layer, exact: "
            f"{planner.table('bytes').exact}); per move: plan {statistics.median(plan_ms):.2f} ms, heatmap "
            f"{statistics.median(figure_ms):.1f} ms (median of 50 budgets)")


def tables(rows: dict, protocol: str, cache: Path) -> str:
    base = (rows.get("fp32") or {}).get("perplexity")
    owl = [f"{m}{o}-{s}" for s in SPARSITIES for m in ("wanda", "sparsegpt") for o in ("", "-owl", "-plan")
           if f"{m}{o}-{s}" in rows] + [f"llmc-sparsegpt-owl-{s}" for s in SPARSITIES]
    return "\n\n".join([protocol, f"fp32: {ppl(rows.get('fp32'))}", atlas_table(rows, cache),
                        comparison_table(rows, base), prediction_table(rows, base),
                        simple_table(rows, ["rtn-w4", "gptq-w4", "awq-w4", "awq-gptq-w4", "llmc-awq-w4"]),
                        simple_table(rows, owl)])


def page_timing(runs: int) -> str:
    """Wall time of the Plan page's script run after each move of the budget slider (AppTest, the sample
    teacher, a proxy atlas of RTN {2, 3, 4} bits g32 built first; warm caches, the first two moves not timed)."""
    import os
    import statistics

    from streamlit.testing.v1 import AppTest

    from bench.ui_bench import APP, BUDGET_MS, percentile, timed_run
    from ui import jobs

    os.environ["SQUEEZELAB_RESULTS_DIR"] = tempfile.mkdtemp(prefix="plan-page-bench-")
    app = AppTest.from_file(APP, default_timeout=300).run()
    app.switch_page("pages/plan.py").run()
    app.multiselect(key="plan_bits").set_value([2, 3, 4])
    app.number_input(key="plan_calib_samples").set_value(16)
    app.number_input(key="plan_calib_seqlen").set_value(128)
    next(b for b in app.run().button if b.label == "Build the atlas").click().run()
    jobs.worker().wait(app.query_params["job"], 600)
    app.run()
    load_before, timings = os.getloadavg()[0], []
    slider = app.slider(key="plan_value_avg_bits")
    for index in range(runs + 2):
        slider.set_value(slider.min + (slider.max - slider.min) * ((index * 7) % 50) / 49)
        timings.append(timed_run(app))
    timings = timings[2:]
    p50, p90 = statistics.median(timings), percentile(timings, 90)
    return (f"Plan page, sample:teacher, move the budget slider: p50 {p50:.0f} ms, p90 {p90:.0f} ms, max "
            f"{max(timings):.0f} ms over {runs} moves ({'within' if p90 <= BUDGET_MS else 'OVER'} {BUDGET_MS:.0f} ms "
            f"p90); machine load {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
