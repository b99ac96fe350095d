"""Speed at batch 1 with a KV cache: prefill time, decode tokens/s, peak memory.

Llama-style models run the static-cache loop of ``core.evaluate.decode`` (the model's own weights and
layers, without the per-step Python of the generic forward); others transformers' forward with its
KV cache. The result says which loop ran.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass

import torch

from core.errors import CancelledError
from core.evaluate.decode import TRANSFORMERS_LOOP, StaticDecoder, loop_name, unsupported_reason
from core.layers import model_device
from core.progress import CancelFn


@dataclass(frozen=True)
class LatencyMetrics:
    """Batch-1 generation speed with the KV cache, measured as the medians of several runs."""

    prefill_ms: float
    decode_tok_s: float
    peak_mem_bytes: int
    prompt_tokens: int
    new_tokens: int
    runs: int
    threads: int
    device: str
    dtype: str
    loop: str = TRANSFORMERS_LOOP

    def as_dict(self) -> dict:
        return asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_steps(step, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:  # noqa: ANN001
    """Time ``step(ids) -> last logits``: the prefill of ``prompt``, then ``new_tokens`` greedy steps."""
    device = prompt.device
    _sync(device)
    start = time.perf_counter()
    token = step(prompt).argmax(dim=-1, keepdim=True)
    _sync(device)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = step(token).argmax(dim=-1, keepdim=True)
    _sync(device)
    return prefill_s, time.perf_counter() - start


@torch.inference_mode()
def _time_generation(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """One run: seconds for the prefill, seconds for ``new_tokens`` greedy decode steps.

    Llama-style models run the static-cache loop of ``core.evaluate.decode`` (same logits, without the
    per-step Python of the generic forward); others transformers' forward with its KV cache.
    """
    if unsupported_reason(model) is None:
        decoder = StaticDecoder(model, prompt.shape[1] + new_tokens)
        return _decode_steps(decoder.forward, prompt, new_tokens)
    past = None

    def step(ids: torch.Tensor) -> torch.Tensor:
        nonlocal past
        out = model(input_ids=ids, past_key_values=past, use_cache=True)
        past = out.past_key_values
        return out.logits[:, -1]

    return _decode_steps(step, prompt, new_tokens)


class _PeakRss:
    """Samples this process's resident memory in a thread; the CPU has no allocator counter."""

    def __init__(self, interval_s: float = 0.005) -> None:
        import psutil

        self._process, self._interval, self.peak = psutil.Process(), interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def measure_latency(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    new_tokens: int = 32,
    warmup: int = 1,
    runs: int = 5,
    cancel: CancelFn | None = None,
) -> LatencyMetrics:
    """Prefill time of ``prompt_ids`` [P] and greedy decode speed for ``new_tokens`` at batch 1.

    Warm-ups first, then the median of ``runs``; CUDA is synchronized around each timed part.
    Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak RSS on CPU.
    """
    device = model_device(model)
    prompt = prompt_ids.reshape(1, -1).to(device)
    for _ in range(warmup):
        _time_generation(model, prompt, min(new_tokens, 4))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    prefills, decodes = [], []
    with _PeakRss() as rss:
        for run in range(runs):
            if cancel is not None and cancel():
                raise CancelledError(f"latency measurement cancelled after {run} of {runs} runs")
            prefill_s, decode_s = _time_generation(model, prompt, new_tokens)
            prefills.append(prefill_s)
            decodes.append(decode_s)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak
    return LatencyMetrics(
        prefill_ms=1000.0 * statistics.median(prefills),
        decode_tok_s=new_tokens / statistics.median(decodes) if new_tokens else float("nan"),
        peak_mem_bytes=int(peak),
        prompt_tokens=int(prompt.shape[1]),
        new_tokens=new_tokens,
        runs=runs,
        threads=torch.get_num_threads(),
        device=str(device),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        loop=loop_name(model),
    )
