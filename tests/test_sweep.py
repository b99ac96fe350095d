"""core.sweep without running models: the sweep file, dotted paths, grids, constraints, the Pareto front,
the report and the cost estimate."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from core.errors import SpecError
from core.store import ResultRow
from core.sweep import SweepSpec, expand_grid, pareto_indices, parse_constraint, summarize
from core.sweep.constraint import parse_constraints
from core.sweep.cost import estimate_cost
from core.sweep.grid import grid_trials
from core.sweep.pareto import dominates
from core.sweep.paths import apply_params, get_path, leaf_paths, set_path
from core.sweep.run import check_trials
from core.sweep.trial import make_trial, method_family, params_key, short_label

BASE = {"model": "sample:teacher", "steps": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}],
        "evaluation": {"max_windows": 2, "seqlen": 64, "latency": False}}


def sweep(**changes) -> dict:
    return {"sweep": "test", "base": json.loads(json.dumps(BASE)), "grid": {"steps.0.quantize.bits": [2, 4]},
            **changes}


# ---- the sweep file ---------------------------------------------------------------------------------

def test_a_valid_sweep_file_reads_back_as_written():
    spec = SweepSpec.from_dict(sweep(constraint={"perplexity": "<= 1.10 * base"}))
    assert spec.name == "test" and spec.kind == "grid"
    assert spec.grid == ({"steps.0.quantize.bits": [2, 4]},)
    assert spec.objectives == {"perplexity": "min", "size_bytes": "min"}
    assert spec.constraints[0].metric == "perplexity" and spec.constraints[0].scale == pytest.approx(1.10)
    assert SweepSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(("changes", "message"), [
    ({"grd": {}}, "unknown sweep key(s) grd; allowed: sweep, base, grid, search"),
    ({"sweep": "no spaces"}, "`sweep:` must be a name"),
    ({"base": {"steps": []}}, "`base:` is not a valid recipe: a recipe needs `model:`"),
    ({"base": {**BASE, "stepz": []}}, "unknown recipe key(s) stepz"),
    ({"search": {"space": {}}}, "exactly one of `grid:`"),
    ({"grid": {"steps.0.quantize.bits": []}}, "grid.steps.0.quantize.bits must be a non-empty list"),
    ({"grid": {"steps.0.quantize.bits": [4, 4]}}, "lists a value twice"),
    ({"grid": {"evaluation.max_windows": [2, 4]}}, "cannot vary 'evaluation.max_windows'"),
    ({"grid": {"model": ["sample:student"]}}, "cannot vary 'model'"),
    ({"objectives": {"prefill_ms": "min"}}, "needs speed measured"),
    ({"objectives": {"perplexity": "lowest"}}, "objective perplexity must be min or max"),
    ({"objectives": {"beauty": "max"}}, "unknown objective 'beauty'"),
    ({"constraint": {"perplexity": "base <= 2"}}, "must start with <=, <, >= or >"),
    ({"constraint": {"perplexity": "about base"}}, "cannot read 'about base'"),
    ({"resources": {"cpus": 0}}, "resources.cpus must be a number >= 1"),
    ({"base": {**BASE, "export": {"format": "hf", "path": "out"}}}, "every trial would write that same folder"),
])
def test_a_bad_sweep_file_is_refused_with_what_to_write(changes, message):
    with pytest.raises(SpecError) as refused:
        SweepSpec.from_dict(sweep(**changes))
    assert message in str(refused.value)


def test_a_path_that_leads_nowhere_is_refused_with_the_paths_that_exist():
    spec = SweepSpec.from_dict(sweep(grid={"steps.1.quantize.bits": [2, 4]}))
    with pytest.raises(SpecError) as refused:
        check_trials(spec)
    message = str(refused.value)
    assert "'steps.1.quantize.bits' does not lead anywhere" in message
    assert "steps.0.quantize.bits" in message and "evaluation.max_windows" in message


def test_a_value_the_recipe_refuses_is_refused_naming_the_trial():
    spec = SweepSpec.from_dict(sweep(grid={"steps.0.quantize.bits": [4, 9]}))
    with pytest.raises(SpecError) as refused:
        check_trials(spec)
    assert "trial bits=9 is not a valid recipe" in str(refused.value) and "bits" in str(refused.value)


def test_a_new_key_at_the_end_of_a_path_is_checked_by_the_recipe():
    spec = SweepSpec.from_dict(sweep(grid={"steps.0.quantize.symmetric": [True, False]}))
    assert [t.recipe.steps[0].parsed.symmetric for t in check_trials(spec)] == [True, False]
    with pytest.raises(SpecError, match="unknown quantize parameter"):
        check_trials(SweepSpec.from_dict(sweep(grid={"steps.0.quantize.bitz": [2]})))


@pytest.mark.parametrize(("space", "message"), [
    ({"steps.0.quantize.bits": {"int": [8, 2]}}, "low < high"),
    ({"steps.0.quantize.bits": {"ints": [2, 8]}}, "exactly one of int, float, choice"),
    ({"steps.0.quantize.bits": {"int": [2, 8], "stride": 2}}, "unknown key(s) stride"),
    ({"steps.0.quantize.bits": {"float": [0.1, 0.9], "step": 0.1, "log": True}}, "step or log, not both"),
    ({"steps.0.quantize.method": {"choice": []}}, "must be a list"),
])
def test_a_bad_search_space_is_refused(space, message):
    data = sweep(search={"space": space, "trials": 4})
    del data["grid"]
    with pytest.raises(SpecError) as refused:
        SweepSpec.from_dict(data)
    assert message in str(refused.value)


def test_a_search_space_is_checked_at_its_ends_before_anything_runs():
    data = sweep(search={"space": {"steps.0.quantize.bits": {"int": [2, 12]}}, "trials": 4})
    del data["grid"]
    with pytest.raises(SpecError, match="trial bits=12 is not a valid recipe"):
        check_trials(SweepSpec.from_dict(data))


# ---- paths and grids ----------------------------------------------------------------------------------

def test_dotted_paths_get_and_set_without_touching_the_original():
    assert get_path(BASE, "steps.0.quantize.bits") == 4
    changed = set_path(BASE, "steps.0.quantize.bits", 8)
    assert changed["steps"][0]["quantize"]["bits"] == 8 and BASE["steps"][0]["quantize"]["bits"] == 4
    replaced = apply_params(BASE, {"steps.0": {"prune": {"method": "magnitude"}}, "steps.0.prune.sparsity": 0.3})
    assert replaced["steps"] == [{"prune": {"method": "magnitude", "sparsity": 0.3}}]
    assert leaf_paths({"a": {"b": [1, {"c": 2}]}, "d": {}}) == ["a.b.0", "a.b.1.c", "d"]
    with pytest.raises(SpecError, match="empty part"):
        get_path(BASE, "steps..bits")


def test_a_grid_is_the_cartesian_product_and_a_list_of_grids_their_union():
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    combos = expand_grid([grid])
    assert combos == [dict(zip("ab", pair, strict=True)) for pair in itertools.product([1, 2, 3], ["x", "y"])]
    union = expand_grid([grid, {"a": [3, 4], "b": ["y"]}])
    assert len(union) == 7 and union[-1] == {"a": 4, "b": "y"}  # {a: 3, b: y} is listed once
    spec = SweepSpec.from_dict(sweep(grid=[{"steps.0.quantize.bits": [2, 4], "steps.0.quantize.method": ["rtn"]},
                                           {"steps.0": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]}]))
    trials = grid_trials(spec)
    assert [t.family for t in trials] == ["rtn", "rtn", "magnitude"]
    assert len({t.key for t in trials}) == 3


def test_trial_keys_labels_and_families():
    assert params_key({"b": 1, "a": 0.5}) == params_key({"a": 0.5, "b": 1}) == '{"a":0.5,"b":1}'
    assert short_label({"steps.0.prune.method": "wanda", "steps.1.quantize.method": "rtn", "x.bits": 4}) == \
        "prune.method=wanda quantize.method=rtn bits=4"
    # a whole step swapped in by the grid reads as the step, its sparsity beside it
    assert short_label({"steps.0": {"prune": {"method": "sparsegpt"}}, "steps.0.prune.sparsity": 0.5}) == \
        "prune method=sparsegpt sparsity=0.5"
    assert short_label({"steps.0": {"prune": {"method": "wanda", "pattern": "2:4"}}}) == \
        "prune method=wanda pattern=2:4"
    assert short_label({"steps.0": [1, 2]}) == "0=[1, 2]"  # not a step: shown as it is
    assert method_family("gptq w4 g32 sym + magnitude 50%") == "gptq+magnitude"
    assert method_family(None) == method_family("base") == "base"
    assert make_trial(BASE, {"steps.0.quantize.method": "gptq"}).family == "gptq"


# ---- constraints ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "op", "scale", "offset"), [
    ("<= 1.10 * base", "<=", 1.10, 0.0),
    ("<=1.1*base", "<=", 1.1, 0.0),
    ("< base * 1.05", "<", 1.05, 0.0),
    ("<= base + 2.5", "<=", 1.0, 2.5),
    ("<= 2 * base - 1", "<=", 2.0, -1.0),
    ("< 110% base", "<", 1.10, 0.0),
    ("<= 110% * base", "<=", 1.10, 0.0),
    (">= 0.9 * base", ">=", 0.9, 0.0),
    ("<= 5e6", "<=", 0.0, 5e6),
    (5e6, "<=", 0.0, 5e6),
])
def test_constraint_expressions_parse_into_a_linear_bound(text, op, scale, offset):
    constraint = parse_constraint("perplexity", text)
    assert (constraint.op, constraint.scale, constraint.offset) == (op, pytest.approx(scale), pytest.approx(offset))


@pytest.mark.parametrize("text", ["1.1 * base", "<= ", "<= base ** 2", "<= base * base", "<= __import__('os')",
                                  "<= 1.1 * base; rm -rf", "<= base + 10%", "== base", "<= (base)", True])
def test_anything_else_is_refused_with_the_grammar(text):
    with pytest.raises(SpecError) as refused:
        parse_constraint("perplexity", text)
    assert "perplexity" in str(refused.value)


def test_a_constraint_accepts_values_inside_its_bound():
    within = parse_constraint("perplexity", "<= 1.10 * base")
    assert within.accepts(110.0, 100.0) and not within.accepts(110.1, 100.0)
    assert not within.accepts(None, 100.0) and not within.accepts(float("nan"), 100.0)
    assert within.violation(105.0, 100.0) == pytest.approx(-5.0)
    faster = parse_constraint("decode_tok_s", "> base")
    assert faster.accepts(11.0, 10.0) and not faster.accepts(10.0, 10.0)
    assert parse_constraint("size_bytes", "<= 5e6").accepts(4e6, None)  # a fixed bound needs no base
    with pytest.raises(SpecError, match="unknown metric"):
        parse_constraints({"beauty": "<= 1"})


# ---- the Pareto front -------------------------------------------------------------------------------------

def brute_force_front(points, lower_better):
    def beats(a, b):
        signs = [1 if lower else -1 for lower in lower_better]
        a, b = [s * v for s, v in zip(signs, a, strict=True)], [s * v for s, v in zip(signs, b, strict=True)]
        return all(x <= y for x, y in zip(a, b, strict=True)) and a != b
    return [i for i, p in enumerate(points) if not any(beats(q, p) for j, q in enumerate(points) if j != i)]


@pytest.mark.parametrize("seed", range(20))
def test_the_pareto_front_matches_brute_force(seed):
    rng = random.Random(seed)
    objectives = rng.choice([2, 3])
    lower_better = [rng.random() < 0.7 for _ in range(objectives)]
    # few distinct values, so ties and duplicate points happen
    points = [tuple(float(rng.randint(0, 6)) for _ in range(objectives)) for _ in range(rng.randint(1, 40))]
    assert pareto_indices(points, lower_better) == brute_force_front(points, lower_better)


def test_the_pareto_front_skips_missing_values_and_keeps_equal_points():
    points = [(1.0, 5.0), (2.0, None), (1.0, 5.0), (3.0, 1.0), (3.0, 2.0), (float("nan"), 0.0)]
    assert pareto_indices(points, [True, True]) == [0, 2, 3]
    assert dominates((1, 1), (1, 2), [True, True]) and not dominates((1, 2), (2, 1), [True, True])


# ---- the report and the cost ------------------------------------------------------------------------------

def row(i: int, params: dict, status: str = "ok", ppl: float | None = None, size: int | None = None,
        method: str = "rtn w4 g32 sym", wall_s: float = 1.0) -> ResultRow:
    return ResultRow(id=f"r{i}", created=f"2026-01-01T00:00:{i:02d}", model="sample:teacher", recipe="", status=status,
                     perplexity=ppl, size_bytes=size, sweep="s", sweep_params=params_key(params), wall_s=wall_s,
                     details={"method": method, "windows": 2, "seqlen": 64})


def test_the_report_has_the_front_the_acceptable_trials_and_the_smallest_acceptable_one():
    rows = [row(0, {}, ppl=10.0, size=100, method="base"),
            row(1, {"bits": 2}, ppl=14.0, size=20), row(2, {"bits": 3}, ppl=10.9, size=30),
            row(3, {"bits": 4}, ppl=10.2, size=40), row(4, {"bits": 5}, ppl=10.5, size=50),
            row(5, {"bits": 8}, status="failed"), row(6, {"bits": 8}, ppl=10.05, size=80),  # a retry that finished
            row(7, {"bits": 4}, status="failed")]  # a failed rerun does not replace the finished row
    report = summarize("s", rows, {"perplexity": "min", "size_bytes": "min"},
                       parse_constraints({"perplexity": "<= 1.10 * base"}))
    assert report.base.id == "r0"
    assert [r.id for r in report.trials] == ["r1", "r2", "r3", "r4", "r6"]
    assert report.pareto == ["r1", "r2", "r3", "r6"]
    assert report.acceptable == ["r2", "r3", "r4", "r6"]
    assert report.best == "r2"
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["best"] == "r2" and as_json["constraint"]["perplexity"]["bound"] == pytest.approx(11.0)
    assert {"sweep", "trials", "pareto", "best"} <= set(as_json)


def test_the_cost_comes_from_earlier_runs_of_the_same_method_on_the_same_model():
    history = [row(i, {}, wall_s=s) for i, s in enumerate((1.0, 3.0, 2.0))]
    history.append(row(9, {}, wall_s=100.0, method="gptq w4 g32 sym"))
    trials = [make_trial(BASE, {"steps.0.quantize.bits": b}) for b in (2, 4)]
    trials.append(make_trial(BASE, {"steps.0.quantize.method": "gptq"}))
    trials.append(make_trial(BASE, {"steps.0": {"prune": {"method": "wanda", "sparsity": 0.5}}}))
    cost = estimate_cost(history, trials)
    assert cost.trials == 4 and cost.unknown == 1
    assert cost.seconds == pytest.approx(2 * 2.0 + 100.0)
    assert "wanda: 1 x no earlier run" in cost.describe() and "rtn: 2 x 2.0 s from 3 earlier runs" in cost.describe()
