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
