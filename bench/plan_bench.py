"""Planning on SmolLM2-135M, protocol cpu-small: the atlas, planned bits against uniform widths and naive
mixes, predicted against measured perplexity, AWQ against RTN / GPTQ / llm-compressor, OWL against uniform.

    python bench/plan_bench.py                                  # every job below, then the tables
    python bench/plan_bench.py --jobs atlas-rtn-measured rtn-plan-3.5 rtn-attn-34 --tables
    python bench/plan_bench.py --page                           # the Plan page's slider, server side

Protocol cpu-small as in ``bench/common.py`` (calibration 64 x 512 WikiText-2 valid, seed 0; evaluation
WikiText-2 test, seqlen 512, first 64 windows; 2 threads; each job in its own process). Quantization is
symmetric with groups of 64 and ``kernel: dequant`` (perplexity of exactly the stored codes; in-memory
bytes = the stored form), block linears only (the tied embedding stays fp32).

* ``atlas-<method>-<mode>``: the atlas of menu {2, 3, 4} bits g64, measured (KL and delta NLL on
  ``--heldout`` held-out calibration windows, one layer changed at a time) or proxy; measured atlases (and the
  proxy atlases of ``PROXY_PLANNED`` methods) are cached in ``--cache`` and planned jobs read them: RTN plans
  from the measured atlas, GPTQ and Wanda plans from the proxy one.
* ``<method>-w<bits>``: uniform; ``<method>-ends-<lo><hi>``: the first and last 4 blocks at ``hi`` bits, the rest
  at ``lo``; ``<method>-attn-<lo><hi>``: attention at ``hi``, MLP at ``lo``; ``<method>-plan-<avg>``: planned at
  ``avg`` stored bits per weight from options {lo, hi} (``{3, 4}`` from 3.25 up, else ``{2, 3}``).
* ``awq-w4`` / ``awq-gptq-w4``: AWQ then RTN / GPTQ; ``llmc-awq-w4``: llm-compressor's AWQModifier + RTN.
* ``<wanda|sparsegpt>-<s>`` and ``-owl-<s>``: uniform and OWL (lambda 0.08, m 5); ``llmc-sparsegpt-owl-<s>``;
  ``wanda-plan-<s>``: each layer's sparsity planned from ``atlas-wanda-proxy`` (levels 0.4 to 0.9).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import calibration_ids, in_child, load_rows, protocol_line, recipe_for, step_wall_s  # noqa: E402

GROUP = 64
MENU_BITS = (2, 3, 4)
OWL = {"lambda": 0.08, "m": 5}
PLAN_BUDGETS = {"rtn": (2.5, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0), "gptq": (2.5, 3.5)}
ENDS = 4  # blocks at each end of the "first and last blocks" mix
SPARSITIES = (50, 60, 70)
WANDA_LEVELS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def quant(method: str, bits: int, **extra) -> dict:
    return {"method": method, "bits": bits, "group_size": GROUP, "kernel": "dequant", **extra}


def mixes(method: str, lo: int, hi: int, blocks: int) -> dict[str, dict]:
    ends = [f"model.layers.{i}.*" for i in (*range(ENDS), *range(blocks - ENDS, blocks))]
    return {f"{method}-ends-{lo}{hi}": quant(method, lo, overrides=[{"pattern": p, "bits": hi} for p in ends]),
            f"{method}-attn-{lo}{hi}": quant(method, lo, overrides=[{"pattern": "*.self_attn.*", "bits": hi}])}


def fixed_jobs(blocks: int = 30) -> dict[str, dict | None]:
    """Every job whose step does not depend on an atlas: name -> quantize/prune step (None: the fp32 model)."""
    jobs: dict[str, dict | None] = {"fp32": None}
    for method in ("rtn", "gptq"):
        jobs.update({f"{method}-w{b}": {"quantize": quant(method, b)} for b in MENU_BITS})
        for lo, hi in ((3, 4), (2, 3)):
            jobs.update({name: {"quantize": step} for name, step in mixes(method, lo, hi, blocks).items()})
    jobs["awq-w4"] = {"quantize": quant("awq", 4)}
    jobs["awq-gptq-w4"] = {"quantize": quant("awq", 4, rounding="gptq")}
    for method in ("wanda", "sparsegpt"):
        for s in SPARSITIES:
            jobs[f"{method}-{s}"] = {"prune": {"method": method, "sparsity": s / 100}}
            jobs[f"{method}-owl-{s}"] = {"prune": {"method": method, "sparsity": s / 100, "owl": dict(OWL)}}
    return jobs


PEER_JOBS = {"llmc-awq-w4": {"kind": "awq", "bits": 4, "group_size": GROUP, "symmetric": True},
             **{f"llmc-sparsegpt-owl-{s}": {"kind": "sparsegpt", "sparsity": s / 100, "owl": dict(OWL)}
                for s in SPARSITIES}}
ATLAS_JOBS = [*(f"atlas-{m}-{mode}" for m in ("rtn", "gptq") for mode in ("measured", "proxy")), "atlas-wanda-proxy"]
PLAN_JOBS = [f"{m}-plan-{b}" for m, budgets in PLAN_BUDGETS.items() for b in budgets]
SPARSITY_PLAN_JOBS = [f"wanda-plan-{s}" for s in SPARSITIES]
# methods planned from their proxy atlas (kept in --cache): a measured GPTQ atlas would take hours on 2 shared cores
PROXY_PLANNED = ("gptq", "wanda")


# ---- atlases (in a child process) ----


def atlas_child(payload: dict) -> dict:
    """Build (or read) one atlas in this process; its timings, rank correlation and cache key."""
    import torch

    from core.calibration.spec import CalibrationSpec
    from core.models.loading import load
    from core.plan.menu import prune_menu, quantize_menu
    from core.plan.request import AtlasRequest, atlas_for

    torch.set_num_threads(2)
    loaded = load(payload["model"], device="cpu")
    menu = prune_menu("wanda", WANDA_LEVELS) if payload["method"] == "wanda" else \
        quantize_menu(payload["method"], MENU_BITS, (GROUP,))
    request = AtlasRequest(payload["model"], menu, payload["mode"],
                           CalibrationSpec(**payload["calibration"]), payload["heldout"], payload["heldout_tokens"])
    atlas = atlas_for(loaded.model, loaded.tokenizer, "wikitext2-valid", request, payload["cache"],
                      loaded.context_length)
    return {"key": atlas.key, "timings": atlas.timings, "spearman": atlas.spearman(), "base_nll": atlas.base_nll,
            "uniform_nll": atlas.uniform_nll, "measured": atlas.measured, "heldout": payload["heldout"],
            "heldout_tokens": payload["heldout_tokens"], "cache": payload["cache"]}


def run_atlas(name: str, model_dir: str, args: argparse.Namespace) -> dict:
    _, method, mode = name.split("-")
    # a proxy atlas is timed in a cache of its own (the measured one, which holds a proxy too, would answer it)
    shared = mode == "measured" or method in PROXY_PLANNED
    cache = str(args.cache) if shared else tempfile.mkdtemp(prefix="squeezelab-atlas-")
    payload = {"model": model_dir, "method": method, "mode": mode, "heldout": args.heldout,
               "heldout_tokens": args.heldout_tokens, "cache": cache,
               "calibration": recipe_for(model_dir, None, False)["calibration"]}
    return in_child({"atlas": payload}, Path(__file__))


# ---- planned jobs ----


def planned_step(name: str, rows: dict, cache: Path) -> dict:
    """The quantize step planned for ``<method>-plan-<avg>`` from its method's measured atlas."""
    from core.plan.cache import load_atlas
    from core.plan.menu import Budget
    from core.plan.planner import Planner, step_params

    method, _, avg = name.split("-")
    avg_bits = float(avg)
    mode = "proxy" if method in PROXY_PLANNED else "measured"
    atlas = load_atlas(cache, rows[f"atlas-{method}-{mode}"]["key"])
    lo, hi = (3, 4) if avg_bits >= 3.25 else (2, 3)
    sub = atlas.restricted([MENU_BITS.index(lo), MENU_BITS.index(hi)])
    plan = Planner(sub, mode).plan(Budget("avg_bits", avg_bits, mode))
    return {"quantize": step_params(plan, "quantize", quant(method, hi), sub.key, mode)}


def planned_sparsity_step(name: str, rows: dict, cache: Path) -> dict:
    """The prune step planned for ``wanda-plan-<s>`` from the Wanda proxy atlas."""
    from core.plan.cache import load_atlas
    from core.plan.menu import Budget
    from core.plan.planner import Planner, step_params

    atlas = load_atlas(cache, rows["atlas-wanda-proxy"]["key"])
    plan = Planner(atlas, "proxy").plan(Budget("sparsity", int(name.rsplit("-", 1)[1]) / 100))
    return {"prune": step_params(plan, "prune", {"method": "wanda"}, atlas.key, "proxy")}


def recipe_of(name: str, model_dir: str, windows: int, rows: dict, cache: Path) -> dict:
    if name in SPARSITY_PLAN_JOBS:
        step = planned_sparsity_step(name, rows, cache)
    else:
        step = planned_step(name, rows, cache) if name in PLAN_JOBS else fixed_jobs()[name]
    return recipe_for(model_dir, [step] if step else None, latency=False, windows=windows)


def peer_row(name: str, model_dir: str, work: Path, windows: int) -> dict:
    """One llm-compressor job in its own venv, its saved model evaluated by ours on the same windows."""
    from bench.peer_llmcompressor import ensure_venv, run_peer

    ensure_venv()
    ids_file = work / "calibration_ids.json"
    if not ids_file.exists():
        ids_file.write_text(json.dumps(calibration_ids(model_dir)))
    peer = run_peer({"model_dir": model_dir, "out_dir": str(work / name), "calibration_ids": str(ids_file),
                     "recipe": PEER_JOBS[name], "threads": 2})
    row = in_child(recipe_for(str(work / name), None, False, windows))
    row.update(step_wall_s=peer["wall_s"], peak_rss_bytes=peer["peak_rss_bytes"], peer=peer, windows=windows)
    return row


def run_all(args: argparse.Namespace) -> dict[str, dict]:
    from bench.eval_vs_plain import smollm2_gguf
    from core import models

    model_dir = str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    rows = load_rows(args.out)
    work = Path(tempfile.mkdtemp(prefix="squeezelab-peer-"))
    for name in args.jobs:
        started = time.perf_counter()
        if name in ATLAS_JOBS:
            rows[name] = run_atlas(name, model_dir, args)
        elif name in PEER_JOBS:
            rows[name] = peer_row(name, model_dir, work, args.windows)
        else:
            rows[name] = in_child(recipe_of(name, model_dir, args.windows, rows, args.cache))
            rows[name]["windows"] = args.windows
        shown = rows[name].get("perplexity") or rows[name].get("timings", {}).get("total_s")
        print(f"{name}: {shown:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


# ---- tables ----


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
        tokens = row.get("heldout_tokens") or 512
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


def tables(rows: dict, windows: int, cache: Path) -> str:
    base = (rows.get("fp32") or {}).get("perplexity")
    owl = [f"{m}{o}-{s}" for s in SPARSITIES for m in ("wanda", "sparsegpt") for o in ("", "-owl", "-plan")
           if f"{m}{o}-{s}" in rows] + [f"llmc-sparsegpt-owl-{s}" for s in SPARSITIES]
    return "\n\n".join([protocol_line(windows), f"fp32: {ppl(rows.get('fp32'))}", atlas_table(rows, cache),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    order = ["fp32", *ATLAS_JOBS, *fixed_jobs(), *PLAN_JOBS, *SPARSITY_PLAN_JOBS, *PEER_JOBS]
    parser.add_argument("--jobs", nargs="*", default=list(dict.fromkeys(order)))
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=2, help="held-out calibration windows of a measured atlas")
    parser.add_argument("--heldout-tokens", type=int, default=None, help="tokens scored of each held-out window")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-plan-bench-cache")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-plan-bench.json")
    parser.add_argument("--tables", action="store_true", help="only print the tables of the rows in --out")
    parser.add_argument("--page", action="store_true", help="only time the Plan page's slider (server side)")
    args = parser.parse_args()
    if args.page:
        print(page_timing(30))
        return
    rows = load_rows(args.out) if args.tables else run_all(args)
    print(tables(rows, args.windows, args.cache))
    print(slider_timing(rows, args.cache))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    payload = json.loads(sys.argv[2])
    print(json.dumps(atlas_child(payload["atlas"])))
elif __name__ == "__main__":
    main()
