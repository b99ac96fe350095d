"""Defaults that work: structured ranking by activation norms when there is calibration text, a setting known to
collapse a model said before it runs, command-line flags for settings a recipe has, and the method in history."""

from __future__ import annotations

import copy

import pytest
import torch

from core.cli import EXIT_OK
from core.prune.structured import StructuredSpec
from core.prune.structured.apply import prune_structured_
from core.recipe import pipeline
from core.recipe.recipe import Recipe
from core.store import ResultStore
from tests.helpers import cli_exit as call

pytestmark = pytest.mark.usefixtures("results_env")




def test_a_recipes_structured_ranking_defaults_to_activation_norms():
    spec = StructuredSpec.from_dict({"method": "structured", "target": "mlp_channels", "fraction": 0.25})
    assert spec.importance == "activation_norm" and spec.needs_calibration and spec.known_risk is None
    assert StructuredSpec.from_dict(spec.to_dict()) == spec


def test_without_an_importance_the_calibration_decides(tiny):
    ids = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(0))
    spec = StructuredSpec("mlp_channels", 0.25)
    with_text = prune_structured_(copy.deepcopy(tiny["llama"]), spec, calibration=ids)
    without = prune_structured_(copy.deepcopy(tiny["llama"]), spec)
    assert with_text.importance == "activation_norm" and without.importance == "weight_norm"
    explicit = prune_structured_(copy.deepcopy(tiny["llama"]), StructuredSpec("mlp_channels", 0.25, "activation_norm"),
                                 calibration=ids)
    assert explicit.removed == with_text.removed


def test_a_setting_known_to_collapse_says_so_before_it_runs(llama, text_file, results_env, capsys):
    risky = StructuredSpec("mlp_channels", 0.25, "weight_norm")
    assert "known to collapse" in risky.known_risk and "activation_norm" in risky.known_risk
    assert StructuredSpec("layers", 0.25, "weight_norm").known_risk is None
    recipe = Recipe.from_dict({"model": llama, "steps": [
        {"prune": {"method": "structured", "target": "mlp_channels", "fraction": 0.25, "importance": "weight_norm"}},
        {"quantize": {"method": "rtn", "bits": 8}}]})
    (risk,) = pipeline.known_risks(recipe)
    assert risk.startswith("step 1 (prune): ranking MLP channels by weight norms")
    code = call(["prune", "--model", llama, "--method", "structured", "--target", "mlp_channels", "--fraction",
                 "0.25", "--importance", "weight_norm", "--text", str(text_file), "--calib-text", str(text_file),
                 "--seqlen", "16", "--max-windows", "2", "--no-latency", "--calib-samples", "2",
                 "--calib-seqlen", "16"])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    warning = err.index("warning: step 1 (prune): ranking MLP channels by weight norms")
    assert warning < err.index("load")  # said before the model loads
    (row,) = ResultStore(results_env).list()
    assert any("known to collapse" in note for note in row.details["notes"])  # and kept with the result


def test_smoothquant_strength_and_ranking_from_the_command_line(llama, text_file, results_env, capsys):
    common = ["--model", llama, "--text", str(text_file), "--calib-text", str(text_file), "--seqlen", "16",
              "--max-windows", "2", "--no-latency", "--calib-samples", "2", "--calib-seqlen", "16"]
    assert call(["quantize", "--method", "int8_dynamic", "--smooth", "0.3", *common]) == EXIT_OK
    assert call(["prune", "--method", "structured", "--target", "mlp_channels", "--fraction", "0.25",
                 "--importance", "activation_norm", *common]) == EXIT_OK
    capsys.readouterr()
    rows = {row.details["method"]: row for row in ResultStore(results_env).list()}
    assert any("smooth 0.3" in method for method in rows)
    assert any("by activation_norm" in method for method in rows)
    assert call(["history"]) == EXIT_OK
    out, _ = capsys.readouterr()
    for method, row in rows.items():  # history shows each run's method beside its id
        assert next(line for line in out.splitlines() if row.id in line).endswith(method)
