"""CUDA paths: 16-bit defaults, batched windows, synchronized latency. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

from core import evaluate, models

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_picks_cuda_and_a_16_bit_dtype(tiny_models):
    loaded = models.load(str(tiny_models["llama"]))
    assert loaded.device.type == "cuda"
    assert loaded.dtype in (torch.bfloat16, torch.float16)
    assert next(loaded.model.parameters()).dtype == loaded.dtype


def test_batched_gpu_evaluation_matches_cpu(tiny_models):
    cpu = models.load(str(tiny_models["llama"]), device="cpu")
    gpu = models.load(str(tiny_models["llama"]), device="cuda", dtype="fp32")
    windows = torch.randint(0, len(cpu.tokenizer), (5, 32), generator=torch.Generator().manual_seed(0))
    on_cpu = evaluate.evaluate_quality(cpu.model, windows)
    on_gpu = evaluate.evaluate_quality(gpu.model, windows)  # batched, 8 windows at a time
    assert on_gpu.perplexity == pytest.approx(on_cpu.perplexity, rel=1e-3)


def test_gpu_latency_reports_allocator_peak(tiny_models):
    loaded = models.load(str(tiny_models["llama"]), device="cuda")
    latency = evaluate.measure_latency(loaded.model, torch.arange(1, 17), new_tokens=4, runs=2)
    assert latency.device.startswith("cuda")
    assert latency.peak_mem_bytes > 0
    assert latency.decode_tok_s > 0


def _cuda_layer(scheme, in_features: int = 1024, out_features: int = 256):
    from core.quantize import rtn_quantize
    from core.quantize.qlinear import QuantLinear

    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(0)).cuda()
    matrix = rtn_quantize(weight, scheme)
    return QuantLinear.from_matrix(matrix, scheme, None, torch.bfloat16), matrix


@pytest.mark.parametrize("kernel", ["int4_weight_only", "dequant"])
def test_int4_tinygemm_matches_the_dequantized_matmul(kernel):
    from core.quantize import QuantScheme

    layer, matrix = _cuda_layer(QuantScheme(4, 128, False))
    x = torch.randn(8, 1024, device="cuda", dtype=torch.bfloat16)
    reference = x.float() @ matrix.dequantize().t()
    layer.use_kernel(kernel)
    out = layer(x).float()
    assert float((out - reference).norm() / reference.norm()) < 2e-2
    assert torch.equal(layer.codes(), matrix.codes)


def test_int8_dynamic_runs_the_integer_matmul_on_cuda():
    from core.quantize import QuantScheme

    layer, matrix = _cuda_layer(QuantScheme(8))
    x = torch.randn(32, 1024, device="cuda")  # torch._int_mm wants more than 16 rows
    reference = x @ matrix.dequantize().t()
    layer.use_kernel("int8_dynamic")
    assert float((layer(x) - reference).norm() / reference.norm()) < 3e-2


def test_gptq_runs_on_cuda_and_beats_rtn(tiny_models):
    from core.quantize import QuantizeSpec, quantize

    loaded = models.load(str(tiny_models["llama"]), device="cuda", dtype="fp32")
    calibration = torch.randint(0, len(loaded.tokenizer), (4, 32), generator=torch.Generator().manual_seed(1))
    windows = torch.randint(0, len(loaded.tokenizer), (4, 32), generator=torch.Generator().manual_seed(2))
    errors = {}
    for method in ("rtn", "gptq"):
        model, _ = quantize(loaded.model, QuantizeSpec(method, bits=3, group_size=16), calibration.cuda())
        with torch.no_grad():
            errors[method] = float((model(windows.cuda()).logits - loaded.model(windows.cuda()).logits).norm())
    assert errors["gptq"] < errors["rtn"]


def test_int8_dynamic_on_cuda_keeps_the_full_grid_and_runs_on_the_cpu_too(tiny_models):
    from core.quantize import QuantizeSpec, choose_kernels, quantize
    from core.quantize.qlinear import QuantLinear

    loaded = models.load(str(tiny_models["llama"]), device="cuda", dtype="fp32")
    model, _ = quantize(loaded.model, QuantizeSpec("int8_dynamic", smooth=0))
    radii = {int((m.codes().to(torch.int16) - 128).abs().max()) for m in model.modules() if isinstance(m, QuantLinear)}
    assert radii == {127}  # torch._int_mm has no int16 pair sums to protect
    ids = torch.randint(0, len(loaded.tokenizer), (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        on_gpu = model(ids.cuda()).logits.cpu()
        choose_kernels(model.cpu(), "int8_dynamic")  # fbgemm sees codes beyond 64: 7-bit activations
        on_cpu = model(ids).logits
    assert float((on_cpu - on_gpu).norm() / on_gpu.norm()) < 0.05
