"""The Sweep page's pure parts: sweep files from the page's choices, the trials table, and the two charts."""

from __future__ import annotations

import pytest

from core.store import ResultRow
from core.sweep import SweepSpec, parse_constraint, summarize
from core.sweep.run import check_trials
from core.sweep.trial import params_key
from ui import sweep_charts, sweeps

BASE = {"model": "sample:teacher", "steps": [], "evaluation": {"max_windows": 2, "seqlen": 64, "latency": False}}


def page_base(technique: str) -> dict:
    steps = [{kind: dict(sweeps.STEP_DEFAULTS[kind])} for kind in sweeps.TECHNIQUES[technique]]
    return {**BASE, "steps": steps}


@pytest.mark.parametrize("technique", list(sweeps.TECHNIQUES))
@pytest.mark.parametrize("mode", ["grid", "search"])
def test_every_page_choice_makes_a_valid_sweep_file(technique, mode):
    values = {}
    for param in sweeps.params_of(technique):
        path = sweeps.path_of(technique, param)
        grid = mode == "grid" or param.kind == "choice"
        values[path] = list(param.default) if grid else tuple(param.bounds)
    search = None if mode == "grid" else {"trials": 6, "sampler": "tpe"}
    mapping = sweeps.sweep_mapping(page_base(technique), technique, values, 0.1, search)
    spec = SweepSpec.from_dict(mapping)
    assert spec.kind == mode and spec.constraints[0].scale == pytest.approx(1.1)
    trials = check_trials(spec)
    if mode == "grid":
        expected = 1
        for param in sweeps.params_of(technique):
            expected *= len(param.default)
        assert len(trials) == expected
    assert spec.name.startswith(f"sample-teacher-{technique.replace('+', '-')}-")
    again = sweeps.sweep_mapping(page_base(technique), technique, values, 0.1, search)
    assert again["sweep"] == mapping["sweep"]  # the same choices, the same name: running them again resumes
    assert sweeps.sweep_mapping(page_base(technique), technique, values, 0.2, search)["sweep"] != mapping["sweep"]


def test_calibration_is_asked_for_only_when_a_chosen_method_needs_it():
    assert not sweeps.needs_calibration({"steps.0.quantize.method": ["rtn"], "steps.0.quantize.bits": [4]})
    assert sweeps.needs_calibration({"steps.0.quantize.method": ["rtn", "gptq"]})
    assert sweeps.needs_calibration({"steps.1.distill.temperature": [2.0]})


def _row(i: int, params: dict, ppl: float, size: int, status: str = "ok", ci: float | None = None) -> ResultRow:
    low, high = (None, None) if ci is None else (ppl - ci, ppl + ci)
    return ResultRow(id=f"r{i}", created=f"2026-01-01T00:00:{i:02d}", model="m", recipe="", status=status,
                     perplexity=ppl, size_bytes=size, sweep="s", sweep_params=params_key(params),
                     perplexity_ci_low=low, perplexity_ci_high=high)


def report():
    rows = [_row(0, {}, 10.0, 400), _row(1, {"a.bits": 2, "a.method": "rtn"}, 15.0, 100, ci=1.0),
            _row(2, {"a.bits": 4, "a.method": "rtn"}, 10.5, 200, ci=0.5),
            _row(3, {"a.bits": 4, "a.method": "gptq"}, 10.8, 200, ci=0.5),
            _row(4, {"a.bits": 8, "a.method": "gptq"}, 10.1, 300, ci=0.5), _row(5, {"a.bits": 3}, 0, 0, "failed")]
    return summarize("s", rows, {"perplexity": "min", "size_bytes": "min"},
                     (parse_constraint("perplexity", "<= 1.1 * base"),))


def test_the_trials_table_marks_the_front_the_acceptable_ones_and_the_best():
    frame = sweeps.trials_frame(report())
    assert list(frame["id"]) == ["r1", "r2", "r3", "r4", "r5"]
    assert list(frame["pareto"][:4]) == [True, True, False, True] and list(frame["best"]) == [False, True] + [False] * 3
    assert list(frame["acceptable"][:4]) == [False, True, True, True]
    assert sweeps.param_labels(report()) == {"a.bits": "bits", "a.method": "method"}
    assert frame.loc[0, "a.bits"] == 2 and frame.loc[0, "size_mb"] == pytest.approx(1e-4)


def test_the_front_chart_draws_the_front_the_best_trial_the_base_line_and_the_band():
    finished = sweeps.trials_frame(report()).query("status == 'ok'")
    figure = sweep_charts.pareto_figure(finished, base_perplexity=10.0, base_size_mb=4e-4, bound=11.0)
    traces = {trace.name: trace for trace in figure.data}
    assert [row[0] for row in traces["Pareto front"].customdata] == ["r1", "r2", "r4"]
    assert [row[0] for row in traces["best acceptable"].customdata] == ["r2"]
    assert list(traces["acceptable"].customdata[0])[0] == "r3"
    assert list(traces["Pareto front"].error_y.array) == pytest.approx([1.0, 0.5, 0.5])  # the perplexity intervals
    shapes = figure.layout.shapes
    assert any(s.type == "rect" and (s.y0, s.y1) == (10.0, 11.0) for s in shapes)  # the acceptable band
    assert any(s.type == "line" and s.y0 == 10.0 for s in shapes)  # the base model's perplexity


def test_the_parallel_coordinates_name_the_choices_of_a_categorical_parameter():
    finished = sweeps.trials_frame(report()).query("status == 'ok'")
    figure = sweep_charts.parallel_figure(finished, {"a.bits": "bits", "a.method": "method"},
                                          {"perplexity": "perplexity", "size_mb": "size (MB)"})
    bits, method, ppl, _ = figure.data[0].dimensions
    assert list(bits.values) == [2, 4, 4, 8]
    assert list(method.ticktext) == ["gptq", "rtn"] and list(method.values) == [1, 1, 0, 0]
    assert list(ppl.values) == pytest.approx([15.0, 10.5, 10.8, 10.1])
