"""Budget steps in the checks before loading (``core.recipe.preflight``): a budget the menu cannot reach, or a
menu option a layer cannot take, is refused before any weights load or any row is written; a budget that fits
passes, and the size model gives the same bytes on the meta device as on the loaded model."""

from __future__ import annotations

import pytest

from core.layers import block_linear_layers
from core.models.device import meta_model
from core.models.loading import load
from core.plan.sizes import fixed_bytes
from core.recipe import Recipe, preflight
from tests.test_recipe_preflight import TEACHER, loads, refused  # noqa: F401 - the fixture, used by name

_ = loads


def test_a_budget_below_the_lightest_choice_is_refused_before_loading(tmp_path, capsys, loads) -> None:  # noqa: F811
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": [{"quantize": {"method": "gptq", "budget": {
        "avg_bits": 2.5, "bits": [3, 4], "group_sizes": [64]}}}]}, loads)
    assert "budget avg_bits=2.5 is below the smallest option" in message
    assert "takes 3.250 bits/weight (every layer at its lightest option)" in message


def test_a_sparsity_budget_beyond_the_levels_is_refused_before_loading(tmp_path, capsys, loads) -> None:  # noqa: F811
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": [{"prune": {"method": "magnitude", "budget": {
        "sparsity": 0.8, "levels": [0.25, 0.5]}}}]}, loads)
    assert "budget sparsity=0.8 is beyond the sparsest option" in message
    assert "the sparsest plan this menu allows has 50.0% sparsity" in message


def test_a_menu_option_a_layer_cannot_take_is_refused_before_loading(tmp_path, capsys, loads) -> None:  # noqa: F811
    # the teacher's widths are 192 and 512: groups of 128 fit no 192-wide layer
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": [{"quantize": {"method": "rtn", "budget": {
        "avg_bits": 4, "bits": [3, 4], "group_sizes": [64, 128]}}}]}, loads)
    assert "128" in message and "192" in message


def test_a_budget_that_fits_passes_the_checks(loads) -> None:  # noqa: F811
    recipe = Recipe.from_dict({"model": TEACHER, "evaluation": {"max_windows": 2, "seqlen": 64, "latency": False},
                               "calibration": {"samples": 4, "seqlen": 64},
                               "steps": [{"prune": {"method": "wanda", "budget": {"sparsity": 0.5}}},
                                         {"quantize": {"method": "awq", "budget": {"avg_bits": 3.5, "bits": [3, 4],
                                                                                   "group_sizes": [64]}}}]})
    checked = preflight.check(recipe)
    assert checked.calibration_tokens == 4 * 64 and loads == []


def test_the_size_model_counts_the_same_bytes_on_the_meta_device() -> None:
    loaded = load(TEACHER)
    meta = meta_model(loaded.model.config, loaded.dtype)
    for model in (loaded.model, meta):
        names = [name for name, _ in block_linear_layers(model)]
        assert len(names) == 42
    planned = [name for name, _ in block_linear_layers(loaded.model)]
    assert fixed_bytes(meta, planned) == fixed_bytes(loaded.model, planned)
    assert fixed_bytes(meta, []) == pytest.approx(sum(p.numel() for p in loaded.model.parameters()) * 4, rel=0.01)
