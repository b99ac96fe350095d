"""OWL (core.prune.owl): per-block sparsities from outlier shares, averaging to the target."""

from __future__ import annotations

import copy

import pytest
import torch

from core.errors import SpecError
from core.prune.apply import owl_layer_sparsities, prune_
from core.prune.owl import outlier_share, owl_sparsities
from core.prune.spec import PruneSpec
from tests.helpers import tiny_tokenizer


def ids(samples: int = 4, seqlen: int = 32) -> torch.Tensor:
    return torch.randint(2, len(tiny_tokenizer()), (samples, seqlen), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("target", "lam"), [(0.5, 0.08), (0.7, 0.08), (0.6, 0.1), (0.3, 0.0)])
def test_ratios_average_to_the_target_and_follow_the_outliers(target, lam):
    shares = [0.010, 0.031, 0.002, 0.018, 0.025, 0.007]
    sparsities = owl_sparsities(shares, target, lam)
    assert sum(sparsities) / len(sparsities) == pytest.approx(target, abs=1e-12)
    assert max(sparsities) - min(sparsities) == pytest.approx(2 * lam, abs=1e-12)
    if lam:  # more outliers, more weights kept
        assert sparsities.index(min(sparsities)) == shares.index(max(shares))
        assert sparsities.index(max(sparsities)) == shares.index(min(shares))


def test_equal_shares_give_every_block_the_target():
    assert owl_sparsities([0.02, 0.02, 0.02], 0.6, 0.08) == [0.6, 0.6, 0.6]


def test_a_spread_that_leaves_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="smaller lambda"):
        owl_sparsities([0.0, 1.0], 0.95, 0.08)


def test_the_outlier_share_counts_scores_above_m_times_the_mean():
    scores = [torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0, 17.0]])]  # mean 3
    assert outlier_share(scores, 5.0) == pytest.approx(1 / 8)
    assert outlier_share(scores, 6.0) == 0.0


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_owl_pruning_keeps_the_overall_sparsity(tiny, method):
    model = copy.deepcopy(tiny["llama"])
    spec = PruneSpec(method=method, sparsity=0.6, owl={"lambda": 0.1})
    found = owl_layer_sparsities(model, spec, ids())
    assert found["lambda"] == 0.1 and found["m"] == 5.0
    assert sum(found["blocks"]) / len(found["blocks"]) == pytest.approx(0.6)
    assert len(set(found["blocks"])) == 2  # the tiny model's two blocks differ
    report = prune_(model, spec, ids())
    assert report.owl["blocks"] == pytest.approx(found["blocks"])
    assert report.sparsity == pytest.approx(0.6, abs=0.01)
    per_block = {}
    for layer in report.layers:
        per_block.setdefault(layer.name.split(".")[2], []).append(layer.sparsity)
    for block, sparsity in zip(sorted(per_block), found["blocks"], strict=True):
        assert all(abs(s - sparsity) < 0.02 for s in per_block[block])


def test_overrides_set_each_layers_sparsity(tiny):
    model = copy.deepcopy(tiny["llama"])
    overrides = [{"pattern": "*.mlp.*", "sparsity": 0.75}, {"pattern": "*", "sparsity": 0}]
    spec = PruneSpec.from_dict({"method": "wanda", "sparsity": 0.5, "overrides": overrides})
    report = prune_(model, spec, ids())
    for layer in report.layers:
        assert layer.sparsity == pytest.approx(0.75 if ".mlp." in layer.name else 0.0, abs=0.02)
    assert spec.label == "wanda 50% +2 overrides"


@pytest.mark.parametrize(("params", "message"), [
    ({"method": "magnitude", "sparsity": 0.5, "owl": {}}, "wanda or sparsegpt"),
    ({"method": "wanda", "sparsity": 0.5, "owl": {"lambda": 0.7}}, "lambda"),
    ({"method": "wanda", "sparsity": 0.5, "owl": {"m": 0}}, "owl m"),
    ({"method": "wanda", "sparsity": 0.5, "owl": {"alpha": 1}}, "unknown owl key"),
    ({"method": "wanda", "pattern": "2:4", "owl": {}}, "unstructured"),
    ({"method": "wanda", "sparsity": 0.5, "overrides": [{"pattern": "*", "sparsity": 1.5}]}, r"\[0, 1\)"),
    ({"method": "wanda", "sparsity": 0.5, "overrides": [{"sparsity": 0.5}]}, "needs a pattern"),
])
def test_bad_per_layer_settings_are_refused(params, message):
    with pytest.raises(SpecError, match=message):
        PruneSpec.from_dict(params)
