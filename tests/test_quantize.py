"""Quantization: the math on tiny tensors, QuantLinear and its kernels, the walk on every family, bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from core.errors import SpecError
from core.evaluate import measure_size
from core.layers import block_linear_layers, decoder_blocks, is_linear, weight_matrix
from core.quantize import (
    QuantizedMatrix,
    QuantizeSpec,
    QuantScheme,
    choose_kernels,
    dequantize_codes,
    fake_quantize,
    gptq_quantize,
    pack_codes,
    packed_columns,
    plan_layers,
    qparams,
    quantize,
    quantize_,
    quantize_codes,
    rtn_quantize,
    sqnr_db,
    unpack_codes,
)
from core.quantize.kernels import FBGEMM_SAFE_RADIUS, kernel_unavailable
from core.quantize.qlinear import QuantLinear
from tests.helpers import CAUSAL_FAMILIES, tiny_causal_lm


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated_inputs(tokens: int, columns: int, seed: int) -> torch.Tensor:
    """Activations with unequal, strongly correlated columns (mostly low rank), like a real layer's inputs."""
    g = _generator(seed)
    factors = torch.randn(tokens, columns // 4, generator=g) @ torch.randn(columns // 4, columns, generator=g)
    return (factors + 0.1 * torch.randn(tokens, columns, generator=g)) * torch.logspace(-0.5, 0.5, columns)


def _output_error(weight: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ (weight - approx).t()).norm() / (x @ weight.t()).norm())


# ---- packing ----


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("columns", [8, 13, 64])
def test_pack_unpack_round_trip_every_width(bits, columns):
    codes = torch.randint(0, 1 << bits, (5, columns), dtype=torch.uint8, generator=_generator(bits))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (5, packed_columns(columns, bits))
    assert packed.shape[1] == math.ceil(columns * bits / 8)  # exactly the bits promised, no slack per code
    assert torch.equal(unpack_codes(packed, bits, columns), codes)


def test_four_bit_codes_are_two_per_byte_low_nibble_first():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert pack_codes(codes, 4).tolist() == [[0x21, 0x0F]]


# ---- schemes, RTN ----


@pytest.mark.parametrize(
    "scheme",
    [QuantScheme(8), QuantScheme(4), QuantScheme(4, 16, False), QuantScheme(3, 16), QuantScheme(2, 8, False)],
)
def test_rtn_error_is_at_most_half_a_step(scheme):
    weight = torch.randn(12, 64, generator=_generator(1))
    scale, zero = qparams(weight, scheme)
    codes = quantize_codes(weight, scale, zero, scheme)
    assert int(codes.max()) <= scheme.levels
    back = dequantize_codes(codes, scale, zero)
    step = scale.repeat_interleave(scheme.group_width(64), dim=1)
    assert ((weight - back).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("radius", [64, 3])
def test_a_code_radius_narrows_the_grid_of_rtn_and_gptq(radius):
    scheme = QuantScheme(8, None, True, radius)
    low, high = scheme.code_bounds()
    assert (low, high) == (128 - radius, 128 + radius)
    weight = torch.randn(16, 64, generator=_generator(21))
    x = _correlated_inputs(256, 64, seed=22)
    for matrix in (rtn_quantize(weight, scheme), gptq_quantize(weight, 2 * x.t() @ x / 256, scheme, blocksize=16)):
        assert int(matrix.codes.min()) >= low and int(matrix.codes.max()) <= high
        assert int(matrix.codes.max()) == high or int(matrix.codes.min()) == low  # the grid is used in full
    step = rtn_quantize(weight, scheme).scale
    assert torch.allclose(step, weight.abs().amax(dim=1, keepdim=True) / radius)


@pytest.mark.parametrize("params", [dict(bits=8, symmetric=False, code_radius=64),
                                    dict(bits=4, code_radius=8), dict(bits=4, code_radius=0)])
def test_a_code_radius_outside_the_signed_range_is_refused(params):
    with pytest.raises(SpecError, match="code_radius"):
        QuantScheme(**params)


def test_more_bits_and_smaller_groups_mean_less_error():
    weight = torch.randn(64, 128, generator=_generator(2))
    snr = {name: sqnr_db(weight, fake_quantize(weight, scheme)) for name, scheme in {
        "w8": QuantScheme(8), "w4": QuantScheme(4), "w4g32": QuantScheme(4, 32), "w3g32": QuantScheme(3, 32),
        "w2g32": QuantScheme(2, 32)}.items()}
    assert snr["w8"] > 40 > snr["w4g32"] > snr["w4"] > 10
    assert snr["w4g32"] > snr["w3g32"] > snr["w2g32"]


def test_symmetric_scheme_keeps_zero_exact_and_asymmetric_fits_a_shifted_range():
    weight = torch.rand(4, 32, generator=_generator(3)) + 1.0  # all positive: asymmetric should win
    assert sqnr_db(weight, fake_quantize(weight, QuantScheme(4, 8, False))) > \
        sqnr_db(weight, fake_quantize(weight, QuantScheme(4, 8, True)))
    zeros = torch.zeros(3, 16)
    assert torch.equal(fake_quantize(zeros, QuantScheme(4)), zeros)


def test_bits_per_weight_counts_scales_and_zero_points():
    assert QuantScheme(4, 64, True).bits_per_weight(576) == pytest.approx(4.25)
    assert QuantScheme(4, 64, False).bits_per_weight(576) == pytest.approx(4.375)
    assert QuantScheme(8).bits_per_weight(576) == pytest.approx(8 + 16 / 576)


# ---- GPTQ ----


@pytest.mark.parametrize(
    ("scheme", "act_order"),
    [(QuantScheme(4), False), (QuantScheme(4, 16), False), (QuantScheme(3, 16, False), False),
     (QuantScheme(3, 16), True), (QuantScheme(2, 16, False), True)],
)
def test_gptq_has_lower_output_error_than_rtn(scheme, act_order):
    weight = torch.randn(32, 64, generator=_generator(4))
    x = _correlated_inputs(512, 64, seed=5)
    hessian = 2 * x.t() @ x / x.shape[0]
    gptq = gptq_quantize(weight, hessian, scheme, blocksize=16, act_order=act_order)
    rtn = rtn_quantize(weight, scheme)
    assert gptq.codes.dtype == torch.uint8 and int(gptq.codes.max()) <= scheme.levels
    assert _output_error(weight, gptq.dequantize(), x) < 0.8 * _output_error(weight, rtn.dequantize(), x)


def test_gptq_with_identity_hessian_rounds_to_nearest():
    """With H = I no column can help another, so GPTQ is exactly round-to-nearest."""
    weight = torch.randn(8, 32, generator=_generator(6))
    scheme = QuantScheme(4)
    gptq = gptq_quantize(weight, torch.eye(32), scheme, percdamp=1e-6)
    assert torch.equal(gptq.codes, rtn_quantize(weight, scheme).codes)


def test_gptq_ignores_inputs_that_were_always_zero():
    weight = torch.randn(8, 16, generator=_generator(7))
    x = _correlated_inputs(64, 16, seed=8)
    x[:, 3] = 0
    out = gptq_quantize(weight, 2 * x.t() @ x / 64, QuantScheme(4))
    assert torch.isfinite(out.dequantize()).all()


# ---- QuantLinear and kernels ----


def _layer(scheme: QuantScheme, bias: bool = True, out_features: int = 48, in_features: int = 64) -> tuple:
    weight = torch.randn(out_features, in_features, generator=_generator(9))
    b = torch.randn(out_features, generator=_generator(10)) if bias else None
    matrix = rtn_quantize(weight, scheme)
    matrix = type(matrix)(matrix.codes, matrix.scale.half().float(), matrix.zero)
    return QuantLinear.from_matrix(matrix, scheme, b, torch.float32), matrix, b


@pytest.mark.parametrize("scheme", [QuantScheme(8), QuantScheme(4, 32, False), QuantScheme(3, 16), QuantScheme(2, 32)])
def test_quant_linear_stores_packed_codes_and_computes_with_them(scheme):
    layer, matrix, bias = _layer(scheme)
    assert layer.qweight.numel() * layer.qweight.element_size() == 48 * math.ceil(64 * scheme.bits / 8)
    assert torch.equal(layer.codes(), matrix.codes)
    x = torch.randn(2, 5, 64, generator=_generator(11))
    torch.testing.assert_close(layer(x), F.linear(x, matrix.dequantize(), bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("scheme", "kernel", "tolerance"),
    [(QuantScheme(8), "int8_weight_only", 2e-2), (QuantScheme(4, 32, False), "int4_weight_only", 2e-2),
     (QuantScheme(4, 32, True), "int4_weight_only", 2e-2), (QuantScheme(8), "int8_dynamic", 3e-2)],
)
def test_integer_kernels_match_the_dequantized_matmul(scheme, kernel, tolerance):
    layer, matrix, bias = _layer(scheme)
    x = torch.randn(7, 64, generator=_generator(12))
    reference = F.linear(x, matrix.dequantize(), bias)
    layer.use_kernel(kernel)
    out = layer(x)
    assert out.shape == reference.shape and out.dtype == x.dtype
    assert float((out - reference).norm() / reference.norm()) < tolerance
    assert torch.equal(layer.codes(), matrix.codes)  # the kernel's layout still holds the same codes


@pytest.mark.parametrize(("scheme", "kernel"), [(QuantScheme(4, 32, False), "int4_weight_only"),
                                                (QuantScheme(8), "int8_dynamic"), (QuantScheme(3, 16), "dequant")])
def test_state_dict_is_the_portable_form_whatever_the_kernel(scheme, kernel):
    layer, matrix, bias = _layer(scheme)
    layer.use_kernel(kernel)
    state = layer.state_dict()
    fresh = QuantLinear(64, 48, scheme, bias=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.codes(), matrix.codes)
    x = torch.randn(3, 64, generator=_generator(13))
    torch.testing.assert_close(fresh(x), F.linear(x, matrix.dequantize(), bias), rtol=1e-5, atol=1e-5)


def test_kernel_memory_is_one_copy_of_the_weights():
    layer, _, _ = _layer(QuantScheme(4, 32, False), bias=False)
    before = measure_size(torch.nn.Sequential(layer)).size_bytes
    layer.use_kernel("int4_weight_only")
    after = measure_size(torch.nn.Sequential(layer)).size_bytes
    assert layer.qweight.numel() == 0  # the stored form was released: the kernel layout replaces it
    assert after < 1.5 * before


def test_int8_dynamic_on_fbgemm_is_exact_for_weights_that_could_overflow_int16():
    """Codes of +-127 times activations quantized to 255 overflow an int16 pair sum on AVX2: such weights
    must run with 7-bit activations, and the result must still be the true product."""
    matrix = QuantizedMatrix(torch.full((4, 64), 255, dtype=torch.uint8), torch.full((4, 1), 0.01),
                             torch.full((4, 1), 128.0))
    layer = QuantLinear.from_matrix(matrix, QuantScheme(8), None, torch.float32)
    layer.use_kernel("int8_dynamic")
    x = torch.ones(1, 64)
    expected = F.linear(x, matrix.dequantize())
    torch.testing.assert_close(layer(x), expected, rtol=0.02, atol=0)
    torch.testing.assert_close(layer.row_matmul()(x), expected, rtol=0.02, atol=0)


def test_int8_dynamic_weights_on_the_narrow_grid_get_8_bit_activations():
    """Inputs with a few large channels: 8-bit activations (allowed by codes within +-64) halve the
    activation rounding error of fbgemm's 7-bit mode."""
    x = torch.randn(16, 64, generator=_generator(23))
    x[:, :4] *= 30
    errors = {}
    for radius in (None, FBGEMM_SAFE_RADIUS):
        layer, matrix, _ = _layer(QuantScheme(8, None, True, radius), bias=False)
        reference = F.linear(x, matrix.dequantize())
        layer.use_kernel("int8_dynamic")
        errors[radius] = float((layer(x) - reference).norm() / reference.norm())
    assert errors[FBGEMM_SAFE_RADIUS] < 0.65 * errors[None]


def test_kernels_say_why_they_cannot_run():
    cpu = torch.device("cpu")
    assert "8-bit symmetric" in kernel_unavailable("int8_dynamic", QuantScheme(4, 32), 64, cpu)
    assert "groups of 32" in kernel_unavailable("int4_weight_only", QuantScheme(4, 16), 64, cpu)
    assert kernel_unavailable("int4_weight_only", QuantScheme(4, 64), 128, cpu) is None
    assert "unknown kernel" in kernel_unavailable("fast", QuantScheme(4), 64, cpu)
    layer, _, _ = _layer(QuantScheme(3, 16))
    with pytest.raises(SpecError, match="cannot run this layer"):
        layer.use_kernel("int4_weight_only")


# ---- the walk ----

CALIBRATION = torch.randint(0, 256, (4, 16), generator=_generator(14))


@torch.no_grad()
def _logits(model: torch.nn.Module) -> torch.Tensor:
    return model(input_ids=CALIBRATION, use_cache=False).logits


@pytest.mark.parametrize("method", ["rtn", "gptq"])
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_every_family_quantizes_every_block_linear_and_nothing_else(tiny, family, method):
    base = tiny[family]
    before = {key: value.clone() for key, value in base.state_dict().items()}
    quantized, report = quantize(base, QuantizeSpec(method, bits=8), CALIBRATION)
    names = [name for name, _ in block_linear_layers(base)]
    assert [layer.name for layer in report.layers] == names
    assert all(isinstance(quantized.get_submodule(name), QuantLinear) for name in names)
    blocks_name, _ = decoder_blocks(base)
    assert not any(is_linear(m) for m in quantized.get_submodule(blocks_name).modules())  # no dense linear left
    assert all(layer.sqnr_db > 30 for layer in report.layers)
    if method == "gptq":
        assert all(layer.rel_error is not None and layer.error_tokens == CALIBRATION.numel() for layer in report.layers)
    reference, out = _logits(base), _logits(quantized)
    assert float((out - reference).norm() / reference.norm()) < 0.05
    assert all(torch.equal(value, before[key]) for key, value in base.state_dict().items())  # base untouched


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_gptq_beats_rtn_on_the_model_outputs(tiny, family):
    base = tiny[family]
    errors = {}
    for method in ("rtn", "gptq"):
        quantized, _ = quantize(base, QuantizeSpec(method, bits=3, group_size=16), CALIBRATION)
        errors[method] = float((_logits(quantized) - _logits(base)).norm())
    assert errors["gptq"] < errors["rtn"]


def test_mixed_precision_overrides_and_skips(tiny):
    spec = QuantizeSpec("rtn", bits=4, group_size=16, overrides=(
        {"pattern": "*.self_attn.*", "bits": 8, "group_size": 0}, {"pattern": "*.layers.1.mlp.*", "skip": True}))
    quantized, report = quantize(tiny["llama"], spec)
    bits = {layer.name: (layer.bits, layer.group_size) for layer in report.layers}
    assert bits["model.layers.0.self_attn.q_proj"] == (8, None)
    assert bits["model.layers.0.mlp.up_proj"] == (4, 16)
    assert "model.layers.1.mlp.up_proj" not in bits
    assert isinstance(quantized.get_submodule("model.layers.1.mlp.up_proj"), torch.nn.Linear)


def test_lm_head_is_quantized_only_when_asked(tiny):
    quantized, report = quantize(tiny["llama"], QuantizeSpec("rtn", bits=8, lm_head=True))
    assert isinstance(quantized.lm_head, QuantLinear) and report.layers[-1].name == "lm_head"
    assert not isinstance(quantize(tiny["llama"], QuantizeSpec("rtn", bits=8))[0].lm_head, QuantLinear)


def test_size_follows_the_bits(tiny):
    base = tiny["llama"]
    dense = measure_size(base)
    quantized, _ = quantize(base, QuantizeSpec("rtn", bits=4, group_size=32, kernel="dequant"))
    size = measure_size(quantized)
    assert size.params == dense.params  # the same weights, represented by codes
    block_weights = sum(weight_matrix(m).numel() for _, m in block_linear_layers(base))
    expected_saving = block_weights * (4 - (4 + 16 / 32) / 8)  # fp32 bytes minus packed codes and fp16 scales
    assert dense.size_bytes - size.size_bytes == pytest.approx(expected_saving, rel=0.01)


def test_int8_dynamic_fixes_the_weight_format_and_runs_its_kernel(tiny):
    quantized, report = quantize(tiny["llama"], QuantizeSpec("int8_dynamic", bits=4, group_size=16))
    assert report.kernels == {"int8_dynamic": len(block_linear_layers(tiny["llama"]))}
    assert {(layer.bits, layer.group_size, layer.symmetric) for layer in report.layers} == {(8, None, True)}
    radii = {int((m.codes().to(torch.int16) - 128).abs().max())
             for m in quantized.modules() if isinstance(m, QuantLinear)}
    assert radii == {FBGEMM_SAFE_RADIUS}  # the grid fbgemm runs with 8-bit activations
    reference, out = _logits(tiny["llama"]), _logits(quantized)
    assert float((out - reference).norm() / reference.norm()) < 0.05


def test_int8_dynamic_narrows_the_grid_for_fbgemm_only():
    spec = QuantizeSpec("int8_dynamic", overrides=({"pattern": "*.mlp.*", "symmetric": True},))
    assert spec.scheme_on("cpu").code_radius == FBGEMM_SAFE_RADIUS
    assert spec.scheme_on("cuda").code_radius is None  # torch._int_mm has no int16 pair sums to protect
    assert spec.scheme_for("model.layers.0.mlp.up_proj", "cuda").code_radius is None
    assert spec.scheme_for("model.layers.0.mlp.up_proj", "cpu").code_radius == FBGEMM_SAFE_RADIUS
    assert QuantizeSpec("rtn", bits=8).scheme_on("cpu").code_radius is None


def test_a_requested_kernel_that_cannot_run_falls_back_with_a_note(tiny):
    model = copy.deepcopy(tiny["llama"])
    quantize_(model, QuantizeSpec("rtn", bits=3, group_size=16, kernel="dequant"))
    counts, notes = choose_kernels(model, "int4_weight_only")
    assert counts == {"dequant": len(block_linear_layers(tiny["llama"]))}
    assert notes and "dequantizing on the fly instead" in notes[0]


@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_half_precision_casts_the_whole_model(tiny, method):
    quantized, report = quantize(tiny["llama"], QuantizeSpec(method))
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16}[method]
    assert {p.dtype for p in quantized.parameters()} == {expected}
    assert report.layers == [] and next(tiny["llama"].parameters()).dtype == torch.float32


# ---- bad input ----


@pytest.mark.parametrize(
    ("params", "message"),
    [({"method": "rtn", "bits": 1}, "bits must be a whole number from 2 to 8"),
     ({"method": "rtn", "bits": 9}, "from 2 to 8"),
     ({"method": "rtn", "group_size": -4}, "group_size must be a positive"),
     ({"method": "hqq"}, "unknown quantization method"),
     ({"method": "rtn", "kernel": "turbo"}, "unknown kernel"),
     ({"method": "gptq", "percdamp": 0}, "percdamp"),
     ({"method": "rtn", "overrides": [{"pattern": "*", "bitz": 3}]}, "unknown override key"),
     ({"method": "rtn", "overrides": [{"pattern": "*", "bits": 12}]}, "from 2 to 8"),
     ({"method": "rtn", "colour": "red"}, "unknown quantize parameter")],
)
def test_bad_specs_are_refused_with_what_is_allowed(params, message):
    with pytest.raises(SpecError, match=message):
        QuantizeSpec.from_dict(params)


def test_a_group_size_that_does_not_divide_names_the_layer_and_nearby_sizes(tiny):
    base = tiny["llama"]
    before = {key: value.clone() for key, value in base.state_dict().items()}
    with pytest.raises(SpecError, match=r"group_size 24 does not divide the 32 input columns of model\.layers\.0\..*"
                                        r"valid sizes near it: .*32"):
        plan_layers(base, QuantizeSpec("rtn", group_size=24))
    with pytest.raises(SpecError):
        quantize(base, QuantizeSpec("rtn", group_size=24))
    assert all(torch.equal(value, before[key]) for key, value in base.state_dict().items())


def test_gptq_without_calibration_is_refused_before_any_work(tiny):
    model = copy.deepcopy(tiny["llama"])
    with pytest.raises(SpecError, match="gptq needs calibration text"):
        quantize_(model, QuantizeSpec("gptq"))
    assert not any(isinstance(m, QuantLinear) for m in model.modules())


def test_patterns_that_select_nothing_are_refused(tiny):
    with pytest.raises(SpecError, match="no layer to quantize"):
        quantize(tiny["llama"], QuantizeSpec("rtn", include=("*.nothing",)))


@pytest.mark.parametrize("a, b", [
    ({"method": "rtn", "group_size": 32}, {"method": "rtn", "group_size": 32, "lm_head": True}),
    ({"method": "rtn", "overrides": [{"pattern": "*.self_attn.*", "bits": 8}]},
     {"method": "rtn", "overrides": [{"pattern": "*.mlp.*", "bits": 8}]}),
    ({"method": "rtn", "overrides": [{"pattern": "*.mlp.*", "bits": 8}]},
     {"method": "rtn", "overrides": [{"pattern": "*.mlp.*", "skip": True}]}),
    ({"method": "int8_dynamic"}, {"method": "int8_dynamic", "smooth": 0.8}),
    ({"method": "int8_dynamic"}, {"method": "int8_dynamic", "smooth": 0}),
    ({"method": "int8_dynamic"}, {"method": "int8_dynamic", "lm_head": True}),
    ({"method": "gptq"}, {"method": "gptq", "act_order": False}),
    ({"method": "gptq"}, {"method": "gptq", "percdamp": 0.05}),
    ({"method": "rtn"}, {"method": "rtn", "kernel": "dequant"}),
    ({"method": "rtn"}, {"method": "rtn", "exclude": ["*mlp*"]}),
])
def test_specs_that_quantize_differently_have_different_labels(a, b):
    assert QuantizeSpec.from_dict(a).label != QuantizeSpec.from_dict(b).label


def test_labels_name_lm_head_overrides_and_smoothing():
    assert QuantizeSpec("gptq", 4, 32, False).label == "gptq w4 g32 asym"  # the defaults add nothing
    assert QuantizeSpec("rtn", 4, 32, lm_head=True).label == "rtn w4 g32 sym +lm_head"
    mixed = QuantizeSpec.from_dict({"method": "rtn", "bits": 4, "group_size": 32, "overrides": [
        {"pattern": "*.self_attn.*", "bits": 8, "group_size": 0}, {"pattern": "model.layers.0.*", "skip": True}]})
    assert mixed.label == "rtn w4 g32 sym overrides [*.self_attn.* w8 per-channel; model.layers.0.* skip]"
    assert QuantizeSpec("int8_dynamic").label == "int8 dynamic (w8a8 per-token) smooth 0.5"
    assert QuantizeSpec("int8_dynamic", smooth=0).label == "int8 dynamic (w8a8 per-token) no smoothing"


def test_group_size_hints_are_valid_for_every_layer_the_step_quantizes():
    """Widths 2560 and 6912 (a 2560-wide model with a 6912-wide MLP): 256 fails on down_proj; the hint must not
    offer a size (160, 768, ...) that the other layers refuse in turn."""
    from core.quantize.scheme import QuantScheme, group_sizes_near

    assert group_sizes_near(256, (2560, 6912)) == [64, 128, 256] and 6912 % 256 == 0 and 2560 % 256 == 0
    assert group_sizes_near(160, (2560, 6912)) == [64, 128, 256]
    for size in group_sizes_near(96, (2560, 6944)):
        assert 2560 % size == 0 and 6944 % size == 0
    assert group_sizes_near(64, (30, 45)) == [3, 5, 15]  # no multiple of 8 divides both
    with pytest.raises(SpecError, match="valid sizes near it: 64, 128, 256, each dividing every layer"):
        QuantScheme(bits=4, group_size=160).check_columns(6912, "mlp.down_proj", (2560, 6912))
    model = tiny_causal_lm("llama")  # widths 32 (q/k/v/o, gate/up) and 64 (down_proj)
    with pytest.raises(SpecError, match=r"valid sizes near it: (\d+, )*\d+, each dividing every layer") as refused:
        plan_layers(model, QuantizeSpec("rtn", group_size=48))
    hinted = [int(n) for n in refused.value.args[0].split("near it: ")[1].split(",")[:3] if n.strip().isdigit()]
    for size in hinted:
        plan_layers(model, QuantizeSpec("rtn", group_size=size))  # every hint is accepted by every layer
