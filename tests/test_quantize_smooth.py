"""SmoothQuant before dynamic int8: exact in float, flatter activations, lower int8 error."""

import copy

import pytest
import torch

from core.errors import SpecError
from core.quantize import QuantizeSpec, quantize_
from core.quantize.smooth import smooth_, unsupported_reason
from tests.helpers import tiny_causal_lm


def _with_outlier_channels(model: torch.nn.Module) -> torch.nn.Module:
    """Make a few hidden channels 30x larger at every norm's output, as trained LLMs have."""
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight[:3] *= 30.0
    return model


@pytest.fixture
def calibration():
    return torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(0))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_smoothing_keeps_the_float_function_and_flattens_activations(calibration):
    model = _with_outlier_channels(tiny_causal_lm("llama"))
    before = _logits(model, calibration)
    report = smooth_(model, calibration, alpha=0.5)
    torch.testing.assert_close(_logits(model, calibration), before, atol=1e-4, rtol=1e-4)
    assert report.layers == 2 * 7  # q, k, v, gate, up, down, o in each of 2 blocks
    assert report.max_ratio_after < report.max_ratio_before / 3


def test_smoothing_lowers_the_int8_error(calibration):
    model = _with_outlier_channels(tiny_causal_lm("llama"))
    reference = _logits(model, calibration)
    errors = {}
    for alpha in (0.0, 0.5):
        quantized = copy.deepcopy(model)
        quantize_(quantized, QuantizeSpec(method="int8_dynamic", smooth=alpha), calibration)
        errors[alpha] = float((_logits(quantized, calibration) - reference).norm() / reference.norm())
    assert errors[0.5] < 0.7 * errors[0.0]


def test_default_smooths_when_there_is_calibration_and_says_so_when_not(calibration):
    with_text = quantize_(tiny_causal_lm("llama"), QuantizeSpec(method="int8_dynamic"), calibration)
    assert any(note.startswith("SmoothQuant alpha 0.5") for note in with_text.notes)
    without = quantize_(tiny_causal_lm("llama"), QuantizeSpec(method="int8_dynamic"))
    assert any("not smoothed (no calibration text)" in note for note in without.notes)
    assert QuantizeSpec(method="int8_dynamic").uses_calibration
    assert not QuantizeSpec(method="int8_dynamic", smooth=0).uses_calibration
    assert not QuantizeSpec(method="rtn").uses_calibration


def test_bad_smoothing_requests_are_refused_before_any_work():
    with pytest.raises(SpecError, match=r"smooth .* must be in \[0, 1\)"):
        QuantizeSpec(method="int8_dynamic", smooth=1.5)
    model = tiny_causal_lm("llama")
    untouched = copy.deepcopy(model.state_dict())
    with pytest.raises(SpecError, match="no calibration text; set smooth: 0"):
        quantize_(model, QuantizeSpec(method="int8_dynamic", smooth=0.5))
    assert all(torch.equal(untouched[k], v) for k, v in model.state_dict().items())
    post_norm = tiny_causal_lm("opt", do_layer_norm_before=False)  # OPT-350m: no norm before the linears
    assert "do_layer_norm_before" in unsupported_reason(post_norm)
    report = quantize_(post_norm, QuantizeSpec(method="int8_dynamic"), torch.randint(0, 300, (2, 8)))
    assert any("not smoothed" in note for note in report.notes)
