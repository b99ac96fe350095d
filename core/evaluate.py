"""Measure a model honestly: quality on fixed windows, size as stored, latency, peak memory.

Perplexity follows the GPTQ / SparseGPT / Wanda protocol: the text tokenized once, cut into
non-overlapping windows of ``seqlen`` (tail dropped), ``exp(mean NLL)`` over every predicted
token of every window. Each window is scored on its own (no context carried across windows).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from core import decode
from core.errors import CancelledError

ProgressFn = Callable[[str, float], None]  # (stage name, fraction done in [0, 1])
CancelFn = Callable[[], bool]  # returns True when the caller wants the work stopped


@dataclass(frozen=True)
class QualityMetrics:
    """Quality of a model on fixed windows (and, when a base model was given, agreement with it)."""

    perplexity: float
    top1_acc: float
    base_perplexity: float | None  # of the base model on the same windows (scored in the same pass)
    top1_agreement: float | None
    kl_to_base: float | None
    windows: int
    seqlen: int
    tokens_scored: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class WindowScore:
    """Sums over one batch of windows; perplexity and accuracy come from their totals."""

    nll_sum: float
    base_nll_sum: float
    correct: int
    agree: int
    kl_sum: float
    count: int


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def _logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    # use_cache=False: no KV cache is built for a single scoring pass.
    return model(input_ids=batch.to(_model_device(model)), use_cache=False).logits


def score_batch(logits: torch.Tensor, batch: torch.Tensor, base_logits: torch.Tensor | None = None) -> WindowScore:
    """Score logits [b, t, v] against next tokens of ``batch`` [b, t]; fp32 math for stability."""
    targets = batch[:, 1:].to(logits.device)
    top1 = logits.argmax(dim=-1)[:, :-1]
    correct, count = int((top1 == targets).sum()), targets.numel()
    # Fused log-softmax + NLL per token on the logits as they are (a view, no shifted copy of the
    # [tokens, vocab] tensor): the last position of each window has no next token and is ignored.
    shifted = torch.full_like(batch, -100, device=logits.device)
    shifted[:, :-1] = targets
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), shifted.reshape(-1), reduction="none")
    if base_logits is None:
        return WindowScore(float(nll.double().sum()), 0.0, correct, 0, 0.0, count)
    predicted = logits[:, :-1, :].float()
    log_probs = F.log_softmax(predicted, dim=-1)
    base_log_probs = F.log_softmax(base_logits[:, :-1, :].float().to(predicted.device), dim=-1)
    # KL(base || model) summed over positions: sum_v p_base * (log p_base - log p_model)
    kl_sum = float((base_log_probs.exp() * (base_log_probs - log_probs)).sum())
    return WindowScore(
        nll_sum=float(nll.double().sum()),
        base_nll_sum=float(-base_log_probs.gather(-1, targets.unsqueeze(-1)).double().sum()),
        correct=correct,
        agree=int((base_log_probs.argmax(dim=-1) == top1).sum()),
        kl_sum=kl_sum,
        count=count,
    )


def evaluate_quality(
    model: torch.nn.Module,
    windows: torch.Tensor,
    base: torch.nn.Module | None = None,
    batch_size: int | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> QualityMetrics:
    """Perplexity, top-1 accuracy and (with ``base``) the base's perplexity, top-1 agreement and KL(base || model).

    ``windows`` is [n, seqlen]. On GPU windows are batched (default 8); on CPU one at a time,
    which is as fast and keeps peak memory low.
    """
    if batch_size is None:
        batch_size = 8 if _model_device(model).type == "cuda" else 1
    totals = [0.0, 0.0, 0, 0, 0.0, 0]
    for start in range(0, windows.shape[0], batch_size):
        if cancel is not None and cancel():
            raise CancelledError(f"evaluation cancelled after {start} of {windows.shape[0]} windows")
        batch = windows[start : start + batch_size]
        base_logits = _logits(base, batch) if base is not None else None
        score = score_batch(_logits(model, batch), batch, base_logits)
        parts = (score.nll_sum, score.base_nll_sum, score.correct, score.agree, score.kl_sum, score.count)
        for index, value in enumerate(parts):
            totals[index] += value
        if on_progress is not None:
            on_progress("evaluate", min(1.0, (start + batch.shape[0]) / windows.shape[0]))
    nll_sum, base_nll_sum, correct, agree, kl_sum, count = totals
    return QualityMetrics(
        perplexity=math.exp(nll_sum / count),
        top1_acc=correct / count,
        base_perplexity=math.exp(base_nll_sum / count) if base is not None else None,
        top1_agreement=agree / count if base is not None else None,
        kl_to_base=kl_sum / count if base is not None else None,
        windows=int(windows.shape[0]),
        seqlen=int(windows.shape[1]),
        tokens_scored=int(count),
    )


@dataclass(frozen=True)
class SizeMetrics:
    """Parameters and the bytes the weights take as stored in memory."""

    params: int
    nonzero_params: int
    size_bytes: int
    bits_per_weight: float


def _weight_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, plus the buffers of packed modules (their integer weights); tied ones once.

    Other buffers (rotary frequencies, position ids, causal masks) are recomputable, not weights.
    """
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    for prefix, module in model.named_modules():
        if hasattr(module, "logical_params"):
            tensors.update({f"{prefix}.{name}": b for name, b in module.named_buffers(recurse=False)})
    return {name: t for name, t in tensors.items() if t.device.type != "meta"}


def measure_size(model: torch.nn.Module) -> SizeMetrics:
    """Count parameters, non-zeros and stored bytes (weights as they sit in memory, tied ones once).

    Packed quantized modules keep integer weights in buffers and report how many weights they
    represent through ``logical_params`` / ``logical_nonzero``; their bytes count as stored.
    A pruned model stored densely therefore shows its zeros but no saving in bytes.
    """
    tensors = _weight_tensors(model)
    floating = [t for t in tensors.values() if isinstance(t, torch.nn.Parameter)]
    packed = [m for m in model.modules() if hasattr(m, "logical_params")]
    params = sum(t.numel() for t in floating) + sum(int(m.logical_params) for m in packed)
    nonzero = sum(int(torch.count_nonzero(t)) for t in floating) + sum(int(m.logical_nonzero) for m in packed)
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    stored += sum(int(getattr(m, "opaque_bytes", 0)) for m in packed)  # weights a kernel keeps outside tensors
    return SizeMetrics(
        params=params,
        nonzero_params=nonzero,
        size_bytes=int(stored),
        bits_per_weight=8.0 * stored / params if params else float("nan"),
    )


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
    loop: str = decode.TRANSFORMERS_LOOP

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

    Llama-style models run the static-cache loop of ``core.decode`` (same logits, without the
    per-step Python of the generic forward); others transformers' forward with its KV cache.
    """
    if decode.unsupported_reason(model) is None:
        decoder = decode.StaticDecoder(model, prompt.shape[1] + new_tokens)
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
    device = _model_device(model)
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
        loop=decode.loop_name(model),
    )
