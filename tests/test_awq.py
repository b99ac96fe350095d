"""AWQ (core.quantize.awq): the fold leaves the float model's logits unchanged, the search never loses to
plain rounding on its objective, and ``method: awq`` quantizes a model end to end."""

from __future__ import annotations

import copy

import pytest
import torch

from core.calibration.hessian import HessianAccumulator
from core.calibration.walk import sequential_walk
from core.errors import SpecError
from core.layers import block_linear_layers
from core.models.device import meta_model
from core.quantize.apply import _AwqFolder, plan_layers, quantize_, quantize_planned_
from core.quantize.awq import rescale_statistics_, scaled_error, search_scales, weight_scale
from core.quantize.fold import block_groups, fold_, share_over_heads
from core.quantize.scheme import QuantScheme, fake_quantize
from core.quantize.spec import QuantizeSpec
from tests.helpers import tiny_causal_lm, tiny_tokenizer
from tests.test_layout import reachable


def calibration_ids(samples: int = 6, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, len(tiny_tokenizer()), (samples, seqlen), generator=generator)


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_folding_any_scales_keeps_the_float_model_exact(tiny):
    model = copy.deepcopy(tiny["llama"]).double()  # float64: the fold is exact up to rounding of 1e-15
    ids = calibration_ids(2)
    before = logits(model, ids)
    generator = torch.Generator().manual_seed(1)
    for layer in model.model.layers:
        groups = block_groups(layer)
        assert [g.kind for g in groups] == ["norm", "heads", "norm", "rows"]
        for group in groups:
            s = torch.rand(group.columns, generator=generator, dtype=torch.float64) * 4 + 0.25
            fold_(group, share_over_heads(s, group.heads) if group.heads else s)
    assert torch.allclose(logits(model, ids), before, rtol=0, atol=1e-10)
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, tiny["llama"].model.layers[0].mlp.down_proj
                           .weight.double())


def test_awqs_searched_scales_fold_away_before_rounding(tiny):
    """The walk with AWQ's prepare step and no rounding: the scales change the weights, not the logits."""
    model = copy.deepcopy(tiny["llama"])
    ids = calibration_ids()
    before = logits(model, ids)
    spec = QuantizeSpec(method="awq", bits=2, group_size=16)
    schemes = {name: scheme for name, _, scheme in plan_layers(model, spec)}
    folder = _AwqFolder(model, spec, schemes)
    sequential_walk(model, ids, lambda name, layer, stats: None, prepare=folder)
    assert any(search.ratio is not None for search in folder.searches), "2-bit rounding should want scales"
    assert torch.allclose(logits(model, ids), before, rtol=1e-4, atol=1e-5)
    weights = {name: layer.weight for name, layer in block_linear_layers(model)}
    original = dict(block_linear_layers(tiny["llama"]))
    assert any(not torch.allclose(weights[n], original[n].weight) for n in weights)


def test_the_search_is_never_worse_than_plain_rounding_on_its_objective():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(512, 64, generator=generator) * torch.logspace(-1, 1.5, 64)  # a few loud input channels
    stats = HessianAccumulator(64)
    stats.add_batch(x)
    weights = [torch.randn(48, 64, generator=generator), torch.randn(16, 64, generator=generator)]
    schemes = [QuantScheme(3, 16), QuantScheme(3, 16)]
    found = search_scales(weights, schemes, stats, grid=10)
    plain = scaled_error(weights, schemes, stats.hessian, None)
    assert found.unscaled_error == pytest.approx(plain)
    assert found.error <= plain and found.ratio is not None  # loud channels: scaling pays
    assert found.error == pytest.approx(scaled_error(weights, schemes, stats.hessian, found.scales))
    s = found.scales
    assert float((s.max() * s.min()).sqrt()) == pytest.approx(1.0, rel=1e-5)


def test_the_error_is_the_output_error_on_the_calibration_inputs():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(300, 32, generator=generator)
    stats = HessianAccumulator(32)
    stats.add_batch(x)
    w, scheme = torch.randn(8, 32, generator=generator), QuantScheme(2, 16)
    s = torch.rand(32, generator=generator) + 0.5
    delta = w - fake_quantize(w * s, scheme) / s
    direct = float((x @ delta.T).square().sum()) / 300 * 2  # H = 2 X^T X / N
    assert scaled_error([w], [scheme], stats.hessian, s) == pytest.approx(direct, rel=1e-4)


def test_rescaled_statistics_are_those_of_the_scaled_inputs():
    generator = torch.Generator().manual_seed(5)
    x, s = torch.randn(100, 8, generator=generator), torch.rand(8, generator=generator) + 0.5
    stats, expected = HessianAccumulator(8), HessianAccumulator(8)
    stats.add_batch(x)
    expected.add_batch(x / s)
    rescale_statistics_(stats, s)
    assert torch.allclose(stats.hessian, expected.hessian, atol=1e-5)
    assert torch.allclose(stats.act_sq_sum, expected.act_sq_sum, atol=1e-4)
    assert torch.allclose(stats.act_abs_sum, expected.act_abs_sum, atol=1e-4)


def test_weight_scale_is_relative_to_each_group():
    w = torch.tensor([[1.0, -2.0, 4.0, 8.0]])
    assert torch.equal(weight_scale([w], [QuantScheme(4, 2)]), torch.tensor([0.5, 1.0, 0.5, 1.0]))


def test_awq_quantizes_a_model_and_beats_rtn_on_the_calibration_loss(tiny):
    ids = calibration_ids(8)
    reference = logits(tiny["llama"], ids)

    def kl_after(spec: QuantizeSpec) -> float:
        model = copy.deepcopy(tiny["llama"])
        report = quantize_(model, spec, ids)
        out = torch.log_softmax(logits(model, ids), -1)
        base = torch.log_softmax(reference, -1)
        assert spec.method != "awq" or any(note.startswith("AWQ:") for note in report.notes)
        return float((base.exp() * (base - out)).sum(-1).mean())

    rtn = kl_after(QuantizeSpec(method="rtn", bits=3, group_size=16))
    awq = kl_after(QuantizeSpec(method="awq", bits=3, group_size=16))
    awq_gptq = kl_after(QuantizeSpec(method="awq", bits=3, group_size=16, rounding="gptq"))
    assert awq < rtn and awq_gptq < rtn


def test_awq_is_refused_without_calibration_or_on_blocks_it_cannot_fold(tiny):
    with pytest.raises(SpecError, match="awq needs calibration"):
        quantize_(copy.deepcopy(tiny["llama"]), QuantizeSpec(method="awq"))
    # OPT-350m normalizes after each sub-block: no norm before q/k/v or fc1 to fold the scales into
    post_norm = tiny_causal_lm("opt", do_layer_norm_before=False)
    with pytest.raises(SpecError, match="do_layer_norm_before"):
        quantize_(post_norm, QuantizeSpec(method="awq", group_size=16), calibration_ids())
    meta = meta_model(post_norm.config)  # the checks before loading refuse it the same way
    with pytest.raises(SpecError, match="do_layer_norm_before"):
        quantize_planned_(meta, QuantizeSpec(method="awq", group_size=16))
    quantize_planned_(meta_model(tiny["llama"].config), QuantizeSpec(method="awq", group_size=16))
    quantize_planned_(meta_model(tiny["gpt2"].config), QuantizeSpec(method="awq", group_size=16))


def test_the_spec_labels_and_needs_calibration():
    spec = QuantizeSpec.from_dict({"method": "awq", "bits": 4, "group_size": 64, "rounding": "gptq"})
    assert spec.needs_calibration and spec.uses_gptq and spec.label == "awq+gptq w4 g64 sym"
    with pytest.raises(SpecError, match="awq_grid"):
        QuantizeSpec(method="awq", awq_grid=0)


def test_the_awq_math_reaches_no_hook():
    assert not reachable("core.quantize.awq") & {"core.calibration.walk", "core.calibration.observe"}
    assert not reachable("core.quantize.fold") & {"core.calibration.walk", "core.calibration.observe"}
