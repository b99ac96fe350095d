"""The dashboard says how sure each figure is: a result panel shows the perplexity's interval and "within
noise" without an arrow, the Trade-offs chart draws error bars, and the phrases behind them read right."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from streamlit.proto.Metric_pb2 import Metric as MetricProto

from core.evaluate import EvalSpec, paired_comparison, perplexity_interval
from core.recipe import Recipe, Step, pipeline
from core.store import ResultRow, ResultStore
from tests.test_app import TINY_EVAL, finished, start
from ui import cache, jobs, results

TWO_WINDOWS = EvalSpec(max_windows=2, seqlen=64, latency=False)


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("SQUEEZELAB_RESULTS_DIR", str(folder))
    return folder


def metric(app, label: str):
    return next(m for m in app.metric if m.label == label)


def test_a_result_panel_shows_the_interval_and_no_arrow_within_noise(results_dir: Path) -> None:
    recipe = Recipe(model="sample:student", evaluation=TINY_EVAL,
                    steps=(Step("quantize", {"method": "rtn", "bits": 8, "group_size": 32}),))
    job = finished(jobs.submit(recipe, cache.load_base("sample:student")))
    assert job.status == "done", job.error
    row = ResultStore(results_dir).get(job.result_id)
    assert row.perplexity_ci_low < row.perplexity < row.perplexity_ci_high
    assert row.details["vs_base"]["verdict"] == "within noise"  # 2 windows: t(0.975, 1) = 12.7 leaves room

    app = start({"job": job.id, "model": "sample:student"}).switch_page("pages/prune.py").run()
    assert not app.exception
    shown = metric(app, "Perplexity")
    half_width = (row.perplexity_ci_high - row.perplexity_ci_low) / 2
    digits = max(0, min(3, 2 - math.floor(math.log10(half_width))))  # three significant digits of the ±
    assert shown.value == f"{row.perplexity:.{digits}f} ± {half_width:.{digits}f}"
    assert shown.proto.delta.startswith("within noise: ")
    assert shown.proto.direction == MetricProto.MetricDirection.NONE  # no win / loss arrow
    assert shown.proto.color == MetricProto.MetricColor.GRAY
    for neutral in ("Top-1 accuracy", "Size"):  # no Zeros headline: this result quantizes, it does not prune
        assert metric(app, neutral).proto.direction == MetricProto.MetricDirection.NONE, neutral
    captions = [c.value for c in app.caption]
    assert any(f"95% CI {row.perplexity_ci_low:.3f}–{row.perplexity_ci_high:.3f}, 2 windows x 64 tokens" in c
               for c in captions), captions
    assert any("within noise: " in c and "paired 95% CI" in c for c in captions), captions
    assert any("only 126 tokens scored: the interval is rough" in w.value for w in app.warning)


def test_the_tradeoffs_chart_draws_each_perplexitys_interval(results_dir: Path) -> None:
    store = ResultStore(results_dir)
    base = pipeline.run(Recipe(model="sample:student", evaluation=TWO_WINDOWS), store)
    pruned = pipeline.run(Recipe(model="sample:student", evaluation=TWO_WINDOWS,
                                 steps=(Step("prune", {"method": "magnitude", "sparsity": 0.5}),)), store)
    app = start().switch_page("pages/tradeoffs.py").run()
    assert not app.exception and not app.error
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    bars = {}
    for trace in figure["data"]:
        if trace.get("mode") != "markers" or "customdata" not in trace:  # not the star of the best result
            continue
        for point, y, up, down in zip(trace["customdata"], trace["y"], trace["error_y"]["array"],
                                      trace["error_y"]["arrayminus"], strict=True):
            bars[point[0]] = (y + up, y - down)
    for row in (base, pruned):
        high, low = bars[row.id]
        assert high == pytest.approx(row.perplexity_ci_high) and low == pytest.approx(row.perplexity_ci_low)
        assert low < row.perplexity < high
    table = app.dataframe[0].value.set_index("id")
    assert table.loc[pruned.id, "perplexity_ci_low"] == pytest.approx(pruned.perplexity_ci_low)
    assert table.loc[pruned.id, "vs_base"].endswith(f"({pruned.details['vs_base']['verdict']})")
    assert any("Error bars are each perplexity's 95% interval" in c.value for c in app.caption)


# --- the phrases of a result, without Streamlit ------------------------------------------------


def _row(vs_base: dict | None, **fields) -> ResultRow:
    interval = perplexity_interval([20.0, 22.0, 24.0, 26.0], [10, 10, 10, 10])
    return ResultRow(id="r", created="", model="m", recipe="", status="ok", perplexity=interval.perplexity,
                     perplexity_ci_low=interval.low, perplexity_ci_high=interval.high, base_perplexity=9.0,
                     details={"windows": 4, "seqlen": 11, "text": "t", "vs_base": vs_base}, **fields)


def test_only_a_real_difference_gets_an_arrow() -> None:
    sums = [20.0, 22.0, 24.0, 26.0]
    worse = paired_comparison([s + d for s, d in zip(sums, [1.0, 1.2, 1.1, 1.3], strict=True)], sums, [10] * 4)
    noise = paired_comparison([s + d for s, d in zip(sums, [0.5, 1.5, -0.2, 1.0], strict=True)], sums, [10] * 4)
    arrow = results.perplexity_delta(_row(worse.as_dict()))
    assert arrow["delta"] == "+0.974 vs base 9.000 (worse)" and arrow["delta_color"] == "inverse"
    quiet = results.perplexity_delta(_row(noise.as_dict()))
    assert quiet["delta"].startswith("within noise: ") and quiet["delta_arrow"] == "off"
    assert results.perplexity_delta(_row(None)) == {"delta": None}
    assert results.perplexity_value(_row(None)) == "9.97 ± 4.21"  # the ± to three significant digits
    wide = _row(None)
    wide.perplexity_ci_low, wide.perplexity_ci_high = 70.735, 101.145
    assert results.perplexity_value(wide) == "10.0 ± 15.2"  # 9.974 to the ± 15.205's one decimal
    wide.perplexity_ci_low = wide.perplexity_ci_high = None
    assert results.perplexity_value(wide) == "9.974"


def test_the_speed_caption_gives_the_spread_and_the_paired_ratio() -> None:
    latency = {"prefill_ms_min": 13.9, "prefill_ms_max": 23.8, "decode_tok_s_min": 213.4, "decode_tok_s_max": 246.5,
               "runs": 5, "threads": 2, "device": "cpu",
               "vs_base": {"decode": 0.9, "decode_min": 0.89, "decode_max": 0.96, "runs": 5, "within_spread": False},
               "busy_note": "machine busy while timing: other processes used 1.3 CPU cores"}
    row = _row(None, prefill_ms=16.6, decode_tok_s=242.1)
    row.details["latency"] = latency
    assert results.speed_caption(row) == ("prefill 16.6 ms (min 13.9, max 23.8, 5 runs) · decode 242.1 tokens/s "
                                          "(min 213.4, max 246.5, 5 runs) · decode 0.90× the base (paired: 5 runs, "
                                          "0.89–0.96×) · batch 1, 2 threads on cpu")
    assert results.notes(row) == ["machine busy while timing: other processes used 1.3 CPU cores"]


def test_the_loop_caption_says_what_timed_the_model_and_why_not_faster() -> None:
    row = _row(None, prefill_ms=16.6, decode_tok_s=242.1)
    assert results.loop_caption(row) is None  # a row from before the decode loops were recorded
    row.details["latency"] = {"loop": "prefill: transformers forward; decode: transformers forward + StaticCache, "
                                      "torch.compile (inductor default)", "step": "compiled", "compile_s": 41.04,
                              "compiled_now": True, "exactness": {"max_logit_diff": 2.1e-6, "tolerance": 1e-3},
                              "loop_notes": ["no hand-written step for family 'gemma3_text'"]}
    assert results.loop_caption(row) == (
        "Timed with prefill: transformers forward; decode: transformers forward + StaticCache, torch.compile "
        "(inductor default) (logits equal the forward's to 2.1e-06 of the largest |logit|; compiled in 41.0 s, once "
        "per model, not in the speed). Why not a faster step: no hand-written step for family 'gemma3_text'")


def test_two_results_on_the_same_windows_compare_pairwise() -> None:
    protocol = {"text": "t", "seqlen": 11, "windows": 4, "window_tokens": [10] * 4}
    a = ResultRow(id="a", created="", model="m", recipe="", status="ok",
                  details={**protocol, "window_nll": [2.0, 2.2, 2.4, 2.6]})
    b = ResultRow(id="b", created="", model="m", recipe="", status="ok",
                  details={**protocol, "window_nll": [2.10, 2.32, 2.51, 2.73]})
    # differences 0.10, 0.12, 0.11, 0.13 per token: mean 0.115 in [0.0944574, 0.1355426] (see the interval tests);
    # exp: +12.19% in [+9.91%, +14.52%], shown to one decimal as the half-width is over 1%
    assert results.paired_between(a, b) == ("b against a on the same 4 windows: +12.2% perplexity vs a "
                                            "(paired 95% CI +9.9% to +14.5%): worse")
    other = ResultRow(id="c", created="", model="m", recipe="", status="ok",
                      details={**protocol, "seqlen": 12, "window_nll": [2.0, 2.2, 2.4, 2.6]})
    assert results.paired_between(a, other) is None  # other windows: only the two intervals compare


def test_the_model_page_baseline_shows_its_interval(results_dir: Path) -> None:
    app = start()
    app.selectbox(key="model").select("sample:student")
    app.number_input(key="eval_seqlen").set_value(64)
    app.number_input(key="eval_windows").set_value(3)
    app.toggle(key="eval_latency").set_value(False)
    app.run()
    next(b for b in app.button if b.label == "Measure the baseline").click().run()
    assert not app.exception
    assert " ± " in metric(app, "Perplexity").value
    assert any("95% CI" in c.value and "3 windows x 64 tokens" in c.value for c in app.caption)
