"""Trade-offs answers the constraint question: the base line, the tolerance band, the best result inside it,
one sweep at a time, and any number of results side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.evaluate import EvalSpec
from core.recipe import Recipe, Step, pipeline
from core.store import ResultStore
from tests.test_app import start
from ui import results

EVAL = EvalSpec(max_windows=4, seqlen=64, latency=False)


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("SQUEEZELAB_RESULTS_DIR", str(folder))
    return folder


def _quantized(store: ResultStore, bits: int, sweep: str | None = None):
    recipe = Recipe(model="sample:student", evaluation=EVAL,
                    steps=(Step("quantize", {"method": "rtn", "bits": bits, "group_size": 32}),))
    return pipeline.run(recipe, store, sweep=sweep, sweep_params=json.dumps({"bits": bits}) if sweep else None)


def test_the_band_marks_the_smallest_result_within_the_tolerance(results_dir: Path) -> None:
    store = ResultStore(results_dir)
    base = pipeline.run(Recipe(model="sample:student", evaluation=EVAL), store)
    rows = {bits: _quantized(store, bits) for bits in (2, 4, 8)}
    within = [r for r in rows.values() if r.perplexity <= 1.10 * base.perplexity]
    smallest = min(within, key=lambda r: r.size_bytes)

    app = start().switch_page("pages/tradeoffs.py").run()
    assert not app.exception and not app.error
    figure = json.loads(app.get("plotly_chart")[0].proto.spec)
    shapes = figure["layout"]["shapes"]
    assert any(s.get("y0") == pytest.approx(base.perplexity) and s.get("y1") == pytest.approx(base.perplexity)
               for s in shapes)  # the base line
    assert any(s.get("y0") == pytest.approx(base.perplexity) and s.get("y1") == pytest.approx(1.1 * base.perplexity)
               for s in shapes)  # the +10% band
    star = next(t for t in figure["data"] if t.get("name", "").startswith("smallest within"))
    assert star["y"] == [pytest.approx(smallest.perplexity)]
    assert any(smallest.id in s.value for s in app.info)

    app.number_input(key="tradeoffs_tolerance").set_value(0.0).run()  # only results at most as bad as the base
    no_worse = [r for r in rows.values() if r.perplexity <= base.perplexity]
    if no_worse:
        assert any(min(no_worse, key=lambda r: r.size_bytes).id in s.value for s in app.info)
    else:
        assert any("No result with size (MB) is within +0%" in w.value for w in app.warning)


def test_a_sweep_filter_and_a_comparison_of_three(results_dir: Path) -> None:
    store = ResultStore(results_dir)
    pipeline.run(Recipe(model="sample:student", evaluation=EVAL), store)
    in_sweep = [_quantized(store, bits, sweep="bits") for bits in (4, 8)]
    other = _quantized(store, 2)
    app = start().switch_page("pages/tradeoffs.py").run()
    table = app.dataframe[0].value
    assert other.id in set(table["id"]) and table.columns[0] == "method"  # the label column comes first (pinned)
    deltas = table.set_index("id")["delta_to_base"]
    for row in [*in_sweep, other]:
        assert deltas[row.id] == pytest.approx(row.perplexity / row.base_perplexity - 1)
    app.selectbox(key="tradeoffs_sweep").select("bits").run()
    assert set(app.dataframe[0].value["id"]) == {r.id for r in in_sweep}

    app.selectbox(key="tradeoffs_sweep").select("every result").run()
    app.multiselect(key="tradeoffs_compare").set_value([r.id for r in [*in_sweep, other]]).run()
    assert not app.exception
    compared = app.dataframe[1].value
    assert list(compared.columns) == [r.id for r in [*in_sweep, other]]
    assert "Δ perplexity to its base" in compared.index


def test_base_reference_needs_one_model_and_one_evaluation() -> None:
    import pandas as pd

    frame = pd.DataFrame({"model": ["a", "a"], "protocol": ["p", "p"], "method": ["base", "rtn"],
                          "perplexity": [10.0, 11.0], "base_perplexity": [10.0, 10.0], "id": ["b", "r"],
                          "size_bytes_axis": [4.0, 1.0]})
    assert results.base_reference(frame) == 10.0
    assert results.smallest_within(frame, 10.0, 0.10, "size_bytes") == "r"
    assert results.smallest_within(frame, 10.0, 0.05, "size_bytes") is None
    assert results.base_reference(frame.assign(model=["a", "b"])) is None
