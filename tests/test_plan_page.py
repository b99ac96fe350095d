"""The Plan page through Streamlit's AppTest: build an atlas, move the budget, run the plan, see predicted
beside measured. The sample student with a tiny calibration (4 windows of 64 tokens) keeps each job short."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from streamlit.testing.v1 import AppTest

from core.plan.cache import list_atlases
from core.store import ResultStore
from tests.test_app import APP, TIMEOUT_S, button, finished, metric, results_dir, use_student_with_tiny_eval  # noqa: F401

_ = results_dir  # the fixture, used by name


def plan_page() -> AppTest:
    app = use_student_with_tiny_eval(AppTest.from_file(APP, default_timeout=TIMEOUT_S).run())
    app.switch_page("pages/plan.py").run()
    app.multiselect(key="plan_bits").set_value([2, 4])
    app.number_input(key="plan_calib_samples").set_value(4)
    app.number_input(key="plan_calib_seqlen").set_value(64)
    app.number_input(key="plan_heldout").set_value(1)
    return app.run()


def test_the_plan_page_builds_an_atlas_plans_any_budget_and_runs_it(results_dir: Path) -> None:  # noqa: F811
    app = plan_page()
    assert not app.exception and not app.error
    assert any("No atlas for these settings yet" in info.value for info in app.info)
    button(app, "Build the atlas").click().run()
    job = finished(app.query_params["job"])
    assert job.status == "done", job.error
    app.run()
    assert not app.exception and not app.error
    assert job.result_id is None, "an atlas keeps no result row"
    [atlas] = list_atlases(results_dir)  # the job cached it beside the results; the page found it there
    assert any(caption.value.startswith(f"Atlas {atlas.key}") for caption in app.caption)
    assert app.get("plotly_chart"), "the atlas heatmap is drawn"

    slider = app.slider(key="plan_value_avg_bits")
    low_bits, high_bits = slider.min, slider.max
    seen = []
    for value in (low_bits, (low_bits + high_bits) / 2, high_bits):
        slider.set_value(value).run()
        assert not app.exception and not app.error
        bits = float(metric(app, "Bits per weight (planned layers)"))
        assert bits <= value + 1e-3
        seen.append((bits, float(metric(app, "Predicted perplexity"))))
    assert seen[0][0] < seen[1][0] < seen[2][0], "the plan follows the slider"
    assert seen[0][1] >= seen[2][1], "more bits never predict a worse model"

    slider.set_value((low_bits + high_bits) / 2).run()
    button(app, "Run this plan").click().run()
    run = finished(app.query_params["job"])
    assert run.status == "done", run.error
    row = ResultStore(results_dir).get(run.result_id)
    step = yaml.safe_load(row.recipe)["steps"][0]["quantize"]
    assert "budget" not in step and step["planned"]["predicted"]["avg_bits"] <= (low_bits + high_bits) / 2 + 1e-3
    app.run()
    assert not app.exception and not app.error
    assert any(m.value.startswith("**Predicted ") for m in app.markdown), "the run's panel: predicted and measured"
    table = app.dataframe[0].value  # the planned runs
    assert list(table["id"]) == [row.id]
    assert table["measured"][0] == pytest.approx(row.perplexity)
    ratio = step["planned"]["predicted"]["perplexity_ratio"]
    assert table["predicted"][0] == pytest.approx(row.base_perplexity * ratio)


def test_an_impossible_budget_says_so(results_dir: Path) -> None:  # noqa: F811
    app = plan_page()
    app.multiselect(key="plan_bits").set_value([]).run()
    assert not app.exception
    assert any("bits must be whole numbers" in error.value for error in app.error)
