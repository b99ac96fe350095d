"""Sweeps that run: a grid and an Optuna search on the sample teacher (RTN trials of 2 windows of 64 tokens, a
second or so each), resuming after a stop, after kill -9, and the ``squeezelab sweep`` command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from core.cli import main
from core.errors import SpecError
from core.store import ResultStore
from core.sweep import SweepSpec, run_sweep, sweep_cost
from core.sweep.run import sweep_folder
from core.sweep.search import STUDY_FILE, SearchPlan

ROOT = Path(__file__).resolve().parent.parent
TINY_EVAL = {"max_windows": 2, "seqlen": 64, "latency": False}
BASE = {"model": "sample:teacher", "steps": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}],
        "evaluation": TINY_EVAL}


def grid_sweep(name: str = "grid", bits=(2, 4, 8), groups=(32,), **extra) -> dict:
    return {"sweep": name, "base": json.loads(json.dumps(BASE)),
            "grid": {"steps.0.quantize.bits": list(bits), "steps.0.quantize.group_size": list(groups)},
            "constraint": {"perplexity": "<= 1.05 * base"}, **extra}


def search_sweep(name: str = "search", trials: int = 4) -> dict:
    return {"sweep": name, "base": json.loads(json.dumps(BASE)),
            "search": {"space": {"steps.0.quantize.bits": {"int": [2, 8]},
                                 "steps.0.quantize.group_size": {"choice": [32, 64]}},
                       "objectives": {"perplexity": "min", "size_bytes": "min"}, "trials": trials, "seed": 3},
            "constraint": {"perplexity": "<= 1.05 * base"}}


def params_count(store: ResultStore, name: str, status: str = "ok") -> Counter:
    return Counter(row.sweep_params for row in store.sweep_rows(name) if row.status == status)


def test_the_store_tags_a_sweeps_rows_and_finds_them(tmp_path):
    store = ResultStore(tmp_path)
    first = store.start("m", "model: m\n", sweep="a", sweep_params='{"x":1}')
    store.start("m", "model: m\n")  # a run of its own
    second = store.start("m", "model: m\n", sweep="b", sweep_params="{}")
    third = store.start("m", "model: m\n", sweep="a", sweep_params='{"x":2}')
    assert [r.id for r in store.sweep_rows("a")] == [first, third]
    assert [r.sweep_params for r in store.sweep_rows("a")] == ['{"x":1}', '{"x":2}']
    assert [r.id for r in store.sweep_rows()] == [first, second, third]
    assert store.get(second).sweep == "b" and store.get(second).to_dict()["sweep_params"] == "{}"


def test_a_grid_runs_every_trial_as_a_tagged_row_and_resumes_without_redoing_any(tmp_path):
    store = ResultStore(tmp_path)
    spec = SweepSpec.from_dict(grid_sweep())
    events = []
    report = run_sweep(spec, store, on_trial=events.append)
    rows = store.sweep_rows("grid")
    assert len(rows) == 4 and all(row.status == "ok" and row.sweep == "grid" for row in rows)
    base_rows = [row for row in rows if row.sweep_params == "{}"]
    assert len(base_rows) == 1 and base_rows[0].details["method"] == "base"  # the base model, measured once
    assert [e.finished for e in events] == [1, 2, 3] and events[-1].planned == 3
    by_bits = {json.loads(row.sweep_params)["steps.0.quantize.bits"]: row for row in report.trials}
    assert sorted(by_bits) == [2, 4, 8]
    assert by_bits[2].size_bytes < by_bits[4].size_bytes < by_bits[8].size_bytes
    assert by_bits[8].perplexity < by_bits[2].perplexity
    assert "quantize:\n    method: rtn\n    bits: 8" in by_bits[8].recipe  # the trial's own recipe
    assert by_bits[2].id in report.pareto and by_bits[8].id in report.pareto
    base = report.base.perplexity
    assert report.acceptable == [r.id for r in report.trials if r.perplexity <= 1.05 * base]
    assert report.best == min(report.acceptable, key=lambda i: report.row(i).size_bytes)

    again = run_sweep(spec, store)  # nothing left: no new row
    assert again.run["ran"] == 0 and again.run["skipped"] == 3 and len(store.sweep_rows("grid")) == 4
    wider = run_sweep(SweepSpec.from_dict(grid_sweep(bits=(2, 3, 4, 8))), store)  # the grid extended: only bits 3 runs
    assert wider.run["ran"] == 1 and len(store.sweep_rows("grid")) == 5 and len(wider.trials) == 4


def test_limits_stop_a_sweep_that_the_next_run_finishes(tmp_path):
    store = ResultStore(tmp_path)
    spec = SweepSpec.from_dict(grid_sweep(bits=(2, 3, 4, 8)))
    assert sweep_cost(spec, store).trials == 5  # the base measurement and four trials
    first = run_sweep(spec, store, max_trials=2)
    assert first.run["ran"] == 2 and first.run["left"] == 2 and "2 trials" in first.run["stopped"]
    assert sweep_cost(spec, store).trials == 2
    second = run_sweep(spec, store)
    assert second.run["ran"] == 2 and second.run["skipped"] == 2 and second.run["left"] == 0
    assert all(count == 1 for count in params_count(store, "grid").values()) and len(second.trials) == 4


def test_a_sweep_name_used_with_another_base_recipe_is_refused(tmp_path):
    store = ResultStore(tmp_path)
    run_sweep(SweepSpec.from_dict(grid_sweep(bits=(4,))), store)
    other = grid_sweep(bits=(4,))
    other["base"]["evaluation"] = {**TINY_EVAL, "max_windows": 3}
    with pytest.raises(SpecError, match="was started with another base recipe"):
        run_sweep(SweepSpec.from_dict(other), store)


def test_a_trial_that_fails_becomes_a_failed_row_and_the_sweep_goes_on(tmp_path):
    store = ResultStore(tmp_path)
    # group 48 divides no layer of the teacher: refused when the trial runs, not when the file is read
    report = run_sweep(SweepSpec.from_dict(grid_sweep(bits=(4,), groups=(48, 32))), store)
    statuses = {json.loads(r.sweep_params)["steps.0.quantize.group_size"]: r for r in report.trials}
    assert statuses[48].status == "failed" and "48" in statuses[48].error
    assert statuses[32].status == "ok" and report.run["failed"] == 1 and report.best == statuses[32].id


def test_a_search_resumes_its_study(tmp_path):
    store = ResultStore(tmp_path)
    spec = SweepSpec.from_dict(search_sweep(trials=4))
    first = run_sweep(spec, store, max_trials=2)
    assert first.run["ran"] + first.run["skipped"] >= 2 and first.run["left"] == 2
    assert (sweep_folder(store, "search") / STUDY_FILE).is_file()  # the study, beside the results
    study = SearchPlan(spec, sweep_folder(store, "search"), {}, lambda row: {}).study
    asked_first = [t.params for t in study.trials]
    second = run_sweep(spec, store)
    study = SearchPlan(spec, sweep_folder(store, "search"), {}, lambda row: {}).study
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and [t.params for t in study.trials[:2]] == asked_first  # the same study, continued
    assert second.run["left"] == 0
    assert all(count == 1 for count in params_count(store, "search").values())  # no parameter set ran twice
    assert all(t.user_attrs["result_id"] in {r.id for r in second.trials} for t in complete)
    feasible = {t.user_attrs["result_id"]: t.constraints["perplexity"] <= 0 for t in complete}
    assert {i for i, ok in feasible.items() if ok} == set(second.acceptable)  # the sampler knows the constraint
    assert second.pareto and set(second.pareto) <= {r.id for r in second.trials}


def test_a_search_never_runs_the_same_parameters_twice(tmp_path):
    store = ResultStore(tmp_path)
    data = search_sweep(trials=5)
    data["search"]["space"] = {"steps.0.quantize.bits": {"choice": [4, 8]}}  # two points: proposals must repeat
    report = run_sweep(SweepSpec.from_dict(data), store)
    assert len(store.sweep_rows("search")) == 3  # the base and the two points, each run once
    study = SearchPlan(SweepSpec.from_dict(data), sweep_folder(store, "search"), {}, lambda row: {}).study
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5  # repeats answered from the rows
    assert report.run["ran"] == 2 and report.run["skipped"] == 3


def test_a_search_asks_again_for_the_trial_a_killed_run_left_running(tmp_path):
    store = ResultStore(tmp_path)
    spec = SweepSpec.from_dict(search_sweep(trials=2))
    plan = SearchPlan(spec, sweep_folder(store, "search"), {}, lambda row: {})
    orphan = plan.next()  # asked, never told: what a process killed mid-trial leaves in the study
    assert orphan is not None and plan.study.trials[0].state.name == "RUNNING"
    report = run_sweep(spec, store)
    study = SearchPlan(spec, sweep_folder(store, "search"), {}, lambda row: {}).study
    assert study.trials[0].state.name == "FAIL"
    rerun = study.trials[1]
    assert rerun.params == orphan.params and rerun.user_attrs["resumes"] == 0 and rerun.state.name == "COMPLETE"
    assert orphan.key in {r.sweep_params for r in report.trials}


def test_the_sweep_command_prints_the_front_and_the_best_trial(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(grid_sweep(bits=(2, 8))))
    assert main(["sweep", str(path), "--results-dir", str(tmp_path / "results"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sweep"] == "grid" and len(printed["trials"]) == 2
    ids = {row["id"] for row in printed["trials"]}
    assert set(printed["pareto"]) <= ids and printed["best"] in ids
    assert all(json.loads(row["sweep_params"]) for row in printed["trials"])
    assert main(["sweep", str(path), "--results-dir", str(tmp_path / "results")]) == 0
    out = capsys.readouterr()
    assert "best acceptable (smallest): " + printed["best"] in out.out and "2 already done and skipped" in out.out


def test_the_sweep_command_refuses_bad_input_with_exit_2(tmp_path, capsys, monkeypatch):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(grid_sweep() | {"grid": {"steps.3.quantize.bits": [2]}}))
    assert main(["sweep", str(path), "--results-dir", str(tmp_path)]) == 2
    assert "steps.0.quantize.bits" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(grid_sweep()))
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    assert main(["sweep", str(path), "--results-dir", str(tmp_path), "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[ray]"' in err and "Traceback" not in err


def test_a_sweep_killed_mid_way_resumes_without_redoing_finished_trials(tmp_path):
    path, results = tmp_path / "sweep.yaml", tmp_path / "results"
    path.write_text(yaml.safe_dump(grid_sweep(name="killed", bits=(2, 3, 4, 5, 6, 8))))
    command = [sys.executable, "-m", "core.cli", "sweep", str(path), "--results-dir", str(results)]
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and child.poll() is None:  # wait for two finished trials after the base
        if results.exists() and sum(params_count(ResultStore(results), "killed").values()) >= 3:
            break
        time.sleep(0.2)
    assert child.poll() is None, "the sweep finished before it could be killed"
    child.send_signal(signal.SIGKILL)
    child.wait()
    store = ResultStore(results)  # opening the store marks the row the killed process left running as failed
    done_before = params_count(store, "killed")
    assert 3 <= sum(done_before.values()) < 7

    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    done_after = params_count(store, "killed")
    assert len(done_after) == 7 and all(count == 1 for count in done_after.values())  # 6 trials + the base, once each
    assert all(row.status in ("ok", "failed") for row in store.sweep_rows("killed"))
    assert all("interrupted" in row.error for row in store.sweep_rows("killed") if row.status == "failed")
