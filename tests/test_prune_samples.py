"""Pruning a real (if small) trained model: the methods rank as in the papers."""

from __future__ import annotations

import pytest

from core import models
from core.recipe import Recipe, pipeline
from core.store import ResultStore


@pytest.fixture(scope="module")
def teacher():
    return models.load("sample:teacher", device="cpu")


def _perplexity(teacher, tmp_path, params: dict) -> float:
    recipe = Recipe.from_dict({
        "model": "sample:teacher",
        "steps": [{"prune": params}],
        "calibration": {"samples": 16, "seqlen": 256, "seed": 0},  # the samples' training text
        "evaluation": {"max_windows": 16, "latency": False, "compare_to_base": False},
    })
    return pipeline.run(recipe, ResultStore(tmp_path), base=teacher).perplexity


def test_at_2_4_sparsegpt_beats_wanda_beats_magnitude(teacher, tmp_path):
    scores = {method: _perplexity(teacher, tmp_path, {"method": method, "pattern": "2:4"})
              for method in ("magnitude", "wanda", "sparsegpt")}
    assert scores["sparsegpt"] < scores["wanda"] < scores["magnitude"], scores


def test_perplexity_rises_with_magnitude_sparsity(teacher, tmp_path):
    scores = [_perplexity(teacher, tmp_path, {"method": "magnitude", "sparsity": s}) for s in (0.0, 0.3, 0.6, 0.9)]
    assert scores == sorted(scores), scores
    assert scores[-1] > 3 * scores[0]
