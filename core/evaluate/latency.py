"""Speed at batch 1 with a KV cache: prefill time, decode tokens/s, peak memory; their spread over runs.

Every model runs the fastest decoder of ``core.evaluate.decode`` that reproduces its own forward on
the timed prompt (checked before timing): a static KV cache, its decode step compiled by
``torch.compile`` where that pays, the hand-written step or transformers' forward otherwise. The
result says which loop ran and why (``loop``, ``loop_notes``), how far its logits were from the
forward's (``exactness``), the compile time apart from the speed (``compile_s``), the min / median /
max of the runs, the speed relative to a base model timed in the same runs (in turns, so each ratio
is paired), and whether other work ran on the machine's CPUs while timing.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace

import torch

from core.errors import CancelledError
from core.evaluate.decode import DYNAMIC_LOOP, ChosenDecoder, open_decoder
from core.evaluate.decode.choice import CHECK_TOKENS
from core.layers import model_device
from core.progress import CancelFn

OTHER_CORES_BUSY = 0.5  # other processes on more than half a core of ours while timing: the machine was busy


@dataclass(frozen=True)
class LatencyMetrics:
    """Batch-1 generation speed with the KV cache: the medians of several runs, and their spread.

    ``prefill_ms`` / ``decode_tok_s`` are the medians (the headline figures); ``*_min`` / ``*_max`` and
    ``*_runs`` are the spread of the runs. ``busy`` says other work ran on this process's CPUs while
    timing (``busy_note`` what was seen). With a base model timed in the same runs, ``base`` holds its
    figures and ``vs_base`` the paired speed ratios (``SpeedRatio``).
    """

    prefill_ms: float
    decode_tok_s: float
    peak_mem_bytes: int
    prompt_tokens: int
    new_tokens: int
    runs: int
    threads: int
    device: str
    dtype: str
    loop: str = DYNAMIC_LOOP
    prefill_ms_min: float | None = None
    prefill_ms_max: float | None = None
    decode_tok_s_min: float | None = None
    decode_tok_s_max: float | None = None
    prefill_ms_runs: tuple[float, ...] = ()
    decode_tok_s_runs: tuple[float, ...] = ()
    load_avg_1m: float | None = None
    other_cpu_cores: float | None = None
    busy: bool = False
    busy_note: str | None = None
    base: dict | None = None  # the base model's LatencyMetrics.as_dict(), timed in the same runs
    vs_base: dict | None = None  # SpeedRatio.as_dict()
    step: str | None = None  # the decode step that ran (core.evaluate.decode.STEPS, or "dynamic")
    loop_notes: tuple[str, ...] = ()  # why faster steps did not run
    compile_s: float | None = None  # seconds compiling the step took (None: not compiled); never in the speed
    compiled_now: bool = False  # compiled during this measurement (False: earlier in this process)
    exactness: dict | None = None  # {"max_logit_diff": relative to the largest |logit|, "tolerance", "tokens"}

    def as_dict(self) -> dict:
        return {**asdict(self), "prefill_ms_median": self.prefill_ms, "decode_tok_s_median": self.decode_tok_s}


@dataclass(frozen=True)
class SpeedRatio:
    """A model's speed over its base's, run by run (the two timed in turns): medians and ranges of the ratios.

    Both ratios read "times faster than the base": decode tokens/s over the base's, and the base's
    prefill time over the model's. ``within_spread``: the decode ratios of the runs straddle 1.
    """

    decode: float
    decode_min: float
    decode_max: float
    prefill: float
    prefill_min: float
    prefill_max: float
    runs: int

    @property
    def within_spread(self) -> bool:
        return self.decode_min <= 1.0 <= self.decode_max

    def as_dict(self) -> dict:
        return {**asdict(self), "within_spread": self.within_spread, "paired": True}


def speed_ratio(model_prefill_s: list[float], model_decode_s: list[float], base_prefill_s: list[float],
                base_decode_s: list[float]) -> SpeedRatio:
    """Per-run ratios of paired timings (run i of the model against run i of the base)."""
    decode = [b / m for m, b in zip(model_decode_s, base_decode_s, strict=True)]  # same tokens: a time ratio
    prefill = [b / m for m, b in zip(model_prefill_s, base_prefill_s, strict=True)]
    return SpeedRatio(statistics.median(decode), min(decode), max(decode), statistics.median(prefill), min(prefill),
                      max(prefill), len(decode))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _time_generation(decoder, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:  # noqa: ANN001
    """One run of a decoder: seconds for the prefill of ``prompt``, seconds for ``new_tokens`` greedy steps."""
    device = prompt.device
    decoder.reset()
    _sync(device)
    start = time.perf_counter()
    token = decoder.forward(prompt).argmax(dim=-1, keepdim=True)
    _sync(device)
    prefill_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = decoder.forward(token).argmax(dim=-1, keepdim=True)
    _sync(device)
    return prefill_s, time.perf_counter() - start


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


class _LoadWatch:
    """While timing: the CPU time other processes took on this process's CPUs, and the load average.

    The load average is a one-minute mean that counts this process's own threads too, so it is only a
    fallback: where per-CPU times can be read (Linux /proc/stat, psutil elsewhere), what other processes
    did during exactly the timed runs decides ``busy_note``.
    """

    def __enter__(self) -> _LoadWatch:
        self.load_avg_1m, self.other_cpu_cores = _load_average(), None
        self._cpus = _cpus_of_this_process()
        self._start = (time.perf_counter(), _busy_cpu_seconds(self._cpus), _own_cpu_seconds())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = time.perf_counter(), _busy_cpu_seconds(self._cpus), _own_cpu_seconds()
        after = _load_average()
        if after is not None:
            self.load_avg_1m = max(after, self.load_avg_1m or 0.0)
        wall_s = wall - self._start[0]
        if busy is not None and self._start[1] is not None and own is not None and wall_s > 0:
            # ticks of 10 ms make a short window noisy by a few hundredths of a core; never below 0
            self.other_cpu_cores = max(0.0, ((busy - self._start[1]) - (own - self._start[2])) / wall_s)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not offered on every platform
        return None


def _cpus_of_this_process() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: every CPU
        return list(range(os.cpu_count() or 1))


def _busy_cpu_seconds(cpus: list[int]) -> float | None:
    """Seconds the given CPUs spent on any work since boot (every state but idle and I/O wait)."""
    import psutil

    try:
        per_cpu = psutil.cpu_times(percpu=True)
    except (OSError, RuntimeError):
        return None
    busy_fields = ("user", "nice", "system", "irq", "softirq", "steal")  # guest time is inside user
    return sum(getattr(per_cpu[cpu], name, 0.0) for cpu in cpus if cpu < len(per_cpu) for name in busy_fields)


def _own_cpu_seconds() -> float | None:
    import psutil

    try:
        times = psutil.Process().cpu_times()
    except (OSError, RuntimeError):
        return None
    return times.user + times.system


def busy_note(load_avg_1m: float | None, other_cpu_cores: float | None, threads: int) -> str | None:
    """A note when the machine was busy while timing, else None.

    Busy: other processes used more than ``OTHER_CORES_BUSY`` of a core of this process's CPUs during the
    timed runs; where that cannot be read, a one-minute load average above the timing's thread count.
    """
    load = f"load average {load_avg_1m:.1f}, " if load_avg_1m is not None else ""
    if other_cpu_cores is not None:
        if other_cpu_cores <= OTHER_CORES_BUSY:
            return None
        return (f"machine busy while timing: other processes used {other_cpu_cores:.1f} CPU cores ({load}"
                f"{threads} timing threads); the speed is lower and noisier than on an idle machine")
    if load_avg_1m is not None and load_avg_1m > threads:
        return (f"machine busy while timing: {load}above the {threads} timing threads; the speed is lower and "
                "noisier than on an idle machine")
    return None


@dataclass
class _Series:
    """One model's timed runs, in order."""

    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    peak_cuda: int = 0


def _interleaved_runs(models: list[torch.nn.Module], decoders: list, prompt: torch.Tensor, new_tokens: int,
                      runs: int, cancel: CancelFn | None) -> list[_Series]:
    """``runs`` timings of each model, in turns (the order alternating run by run, so neither always goes first)."""
    series = [_Series() for _ in models]
    for run in range(runs):
        if cancel is not None and cancel():
            raise CancelledError(f"latency measurement cancelled after {run} of {runs} runs")
        order = list(range(len(models))) if run % 2 == 0 else list(reversed(range(len(models))))
        for index in order:
            device = model_device(models[index])
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            prefill_s, decode_s = _time_generation(decoders[index], prompt.to(device), new_tokens)
            series[index].prefill_s.append(prefill_s)
            series[index].decode_s.append(decode_s)
            if device.type == "cuda":
                series[index].peak_cuda = max(series[index].peak_cuda, torch.cuda.max_memory_allocated(device))
    return series


def _metrics(model: torch.nn.Module, chosen: ChosenDecoder, series: _Series, prompt_tokens: int, new_tokens: int,
             peak: int, watch: _LoadWatch) -> LatencyMetrics:
    """The medians and the spread of one model's runs, with what the machine was doing meanwhile."""
    prefill_ms = [1000.0 * s for s in series.prefill_s]
    rates = [new_tokens / s if new_tokens else float("nan") for s in series.decode_s]
    threads = torch.get_num_threads()
    return LatencyMetrics(
        prefill_ms=statistics.median(prefill_ms),
        decode_tok_s=new_tokens / statistics.median(series.decode_s) if new_tokens else float("nan"),
        peak_mem_bytes=int(peak), prompt_tokens=prompt_tokens, new_tokens=new_tokens, runs=len(prefill_ms),
        threads=threads, device=str(model_device(model)),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), loop=chosen.loop, step=chosen.step,
        loop_notes=tuple(chosen.notes), compile_s=chosen.compile_s, compiled_now=chosen.compiled_now,
        exactness={"max_logit_diff": chosen.deviation, "tolerance": chosen.tolerance, "tokens": CHECK_TOKENS + 1},
        prefill_ms_min=min(prefill_ms), prefill_ms_max=max(prefill_ms), decode_tok_s_min=min(rates),
        decode_tok_s_max=max(rates), prefill_ms_runs=tuple(prefill_ms), decode_tok_s_runs=tuple(rates),
        load_avg_1m=watch.load_avg_1m, other_cpu_cores=watch.other_cpu_cores,
        busy_note=(note := busy_note(watch.load_avg_1m, watch.other_cpu_cores, threads)), busy=note is not None,
    )


def measure_latency(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    new_tokens: int = 32,
    warmup: int = 1,
    runs: int = 5,
    cancel: CancelFn | None = None,
    base: torch.nn.Module | None = None,
    compile: bool | None = None,
) -> LatencyMetrics:
    """Prefill time of ``prompt_ids`` [P] and greedy decode speed for ``new_tokens`` at batch 1.

    Each model first gets its decoder (``core.evaluate.decode.open_decoder``: checked against the
    model's forward on this prompt, compiled when ``compile`` is true, or None and the model is large
    enough; compile time is reported apart). Warm-ups follow, then the median of ``runs`` (and their
    min / max); CUDA is synchronized around each timed part. Peak memory: ``torch.cuda.max_memory_allocated``
    during the model's own runs on CUDA, the process's peak RSS on CPU. With ``base`` the base model is
    timed in the same runs, in turns with ``model``, so each run's speed ratio compares timings taken
    moments apart (``vs_base``).
    """
    device = model_device(model)
    prompt = prompt_ids.reshape(1, -1).to(device)
    timed = [model] if base is None else [model, base]
    max_len = int(prompt.shape[1]) + new_tokens
    with ExitStack() as stack:
        chosen = [stack.enter_context(open_decoder(m, prompt.to(model_device(m)), max_len, compile)) for m in timed]
        decoders = [c.decoder for c in chosen]
        for candidate, decoder in zip(timed, decoders, strict=True):
            for _ in range(warmup):
                _time_generation(decoder, prompt.to(model_device(candidate)), min(new_tokens, 4))
        with _PeakRss() as rss, _LoadWatch() as watch:
            series = _interleaved_runs(timed, decoders, prompt, new_tokens, runs, cancel)
    peaks = [s.peak_cuda if model_device(m).type == "cuda" else rss.peak for m, s in zip(timed, series, strict=True)]
    metrics = _metrics(model, chosen[0], series[0], int(prompt.shape[1]), new_tokens, peaks[0], watch)
    if base is None:
        return metrics
    base_metrics = _metrics(base, chosen[1], series[1], int(prompt.shape[1]), new_tokens, peaks[1], watch)
    ratio = speed_ratio(series[0].prefill_s, series[0].decode_s, series[1].prefill_s, series[1].decode_s)
    return replace(metrics, base=base_metrics.as_dict(), vs_base=ratio.as_dict())
