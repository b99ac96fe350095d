"""Which decoder runs a model: the fastest exact one for its family and kernels, checked, built once per model.

``plan_steps`` lists the decode steps that can run a model, fastest first (``LOOP_ORDER``
for the kind of kernel it runs), and says why the others cannot. ``open_decoder`` tries them in
order: each is built, run on the prompt and a few greedy tokens, and kept only when its logits
equal the model's own forward on the same tokens (``check_exact``; a compiled step that fails to
compile, or an inexact one, hands over to the next, and the note says why). The decoder is then kept
on the model (``DecoderCache``), so compiling is paid once per model per process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from core.evaluate.decode import hand
from core.evaluate.decode.compiled import DEFAULT_SETTINGS, CompileSettings, compiler_unavailable
from core.evaluate.decode.loops import DynamicCacheDecoder, StaticCacheDecoder, static_cache_reason

# The decode steps, fastest first, per kind of matmul kernel the model runs (``kernel_kind``); the
# first that can run the model exactly is used. bench/accel_bench.py times them side by side; where the
# generic compiled step is within 10% of the hand step it comes first, so a family needs no entry.
# fbgemm's int8 weights are an opaque object torch.compile cannot trace, so int8_dynamic keeps the
# hand step, whose stacked q/k/v and gate/up matmuls enter fbgemm once per stack.
LOOP_ORDER: dict[str, tuple[str, ...]] = {
    "dense": ("compiled", "hand", "eager"),
    "int8_weight_only": ("compiled", "hand", "eager"),
    "int4_weight_only": ("compiled", "hand", "eager"),
    "int8_dynamic": ("hand", "compiled", "eager"),
    "dequant": ("compiled", "hand", "eager"),
}

# Below this many parameters compiling (tens of seconds) costs more than the whole evaluation of the
# model, and "auto" runs the fastest eager step instead (and says so).
COMPILE_MIN_PARAMS = 20_000_000
CHECK_TOKENS = 3  # greedy tokens compared with the model's forward before a decoder is trusted
# Largest |logit difference| a decoder may show against the model's forward, relative to the largest
# |logit|: float32 sums in another order; more where the model or its kernels compute in bf16, or
# quantize activations (fbgemm rounds a token alone a hair differently from the same token in a batch)
TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-6}
LOW_PRECISION_TOLERANCE = 3e-2
LOW_PRECISION_KERNELS = ("int8_weight_only", "int4_weight_only", "int8_dynamic")


def kernel_kind(model: nn.Module) -> str:
    """The kernel most quantized layers run ('int8_dynamic', 'int4_weight_only', ...), or 'dense'."""
    counts: dict[str, int] = {}
    for module in model.modules():
        kernel = getattr(module, "kernel", None)
        if isinstance(kernel, str) and hasattr(module, "scheme"):
            counts[kernel] = counts.get(kernel, 0) + 1
    return max(counts, key=counts.get) if counts else "dense"


@dataclass(frozen=True)
class StepPlan:
    """The decode steps that can run a model, fastest first, and why the others cannot."""

    steps: tuple[str, ...]
    notes: tuple[str, ...]


def _compile_reason(model: nn.Module, compile: bool | None) -> str | None:
    if compile is False:
        return "compile off (asked)"
    unavailable = compiler_unavailable()
    if unavailable:
        return unavailable
    params = sum(p.numel() for p in model.parameters()) + sum(
        getattr(m, "logical_params", 0) for m in model.modules())
    if compile is None and params < COMPILE_MIN_PARAMS:
        return (f"compile off: {params / 1e6:.1f} M parameters, below the {COMPILE_MIN_PARAMS // 1_000_000} M "
                "where compiling pays for itself (evaluation.compile: true forces it)")
    return None


def plan_steps(model: nn.Module, compile: bool | None = None, max_len: int | None = None) -> StepPlan:
    """The candidate steps for ``model`` over ``max_len`` positions (``compile`` None: compile when the
    model is big enough)."""
    static = static_cache_reason(model)
    if static:
        return StepPlan(("dynamic",), (static,))
    layout = hand.hand_layout(model)
    hand_reason = (f"no hand-written step for family {model.config.model_type!r}" if layout is None
                   else hand.unsupported_reason(model, layout, max_len))
    compile_reason = _compile_reason(model, compile)
    steps, notes = [], []
    for step in LOOP_ORDER.get(kernel_kind(model), LOOP_ORDER["dense"]):
        reason = hand_reason if step.startswith("hand") else None
        reason = reason or (compile_reason if step.endswith("compiled") else None)
        if reason is None:
            steps.append(step)
        elif step.startswith("hand") and hand_reason and f"hand step: {hand_reason}" not in notes:
            notes.append(f"hand step: {hand_reason}")
        elif step.endswith("compiled") and compile_reason not in notes:
            notes.append(compile_reason)
    return StepPlan(tuple(steps), tuple(notes))


def tolerance(model: nn.Module) -> float:
    """How far a decoder's logits may be from the forward's (relative to the largest |logit|)."""
    dtype = next(model.parameters()).dtype
    low = dtype not in TOLERANCE or any(getattr(m, "kernel", "dense") in LOW_PRECISION_KERNELS
                                        for m in model.modules() if hasattr(m, "scheme"))
    return LOW_PRECISION_TOLERANCE if low else TOLERANCE[dtype]


@torch.inference_mode()
def check_exact(decoder, model: nn.Module, prompt: torch.Tensor, tokens: int = CHECK_TOKENS) -> float:  # noqa: ANN001
    """max |decoder logits - forward logits| / max |forward logits| over the prompt's last position and
    ``tokens`` greedy steps (the decoder's own tokens, scored again by one forward of the whole sequence)."""
    decoder.reset()
    rows, fed = [decoder.forward(prompt)], [prompt]
    for _ in range(tokens):
        fed.append(rows[-1].argmax(dim=-1, keepdim=True))
        rows.append(decoder.forward(fed[-1]))
    decoder.reset()
    ids = torch.cat(fed, dim=1)
    reference = model(input_ids=ids).logits[0, prompt.shape[1] - 1:].float()
    got = torch.cat(rows).float()
    return float((got - reference).abs().max() / reference.abs().max().clamp(min=1e-6))


def build(model: nn.Module, max_len: int, step: str, settings: CompileSettings = DEFAULT_SETTINGS):  # noqa: ANN201
    """A decoder running ``step`` ('dynamic' for transformers' DynamicCache)."""
    if step == "dynamic":
        return DynamicCacheDecoder(model, max_len)
    return StaticCacheDecoder(model, max_len, step, settings)


def _fingerprint(model: nn.Module) -> tuple:
    """Changes when a weight is replaced or written in place, or a layer switches kernel."""
    parts = []
    for tensor in [*model.parameters(), *model.buffers()]:
        try:
            version = tensor._version
        except RuntimeError:  # an inference tensor has no version counter (and cannot be written outside it)
            version = -1
        parts.append((id(tensor), version))
    parts.extend(getattr(m, "kernel", None) for m in model.modules() if hasattr(m, "scheme"))
    return tuple(parts)


class DecoderCache:
    """Decoders kept on a model (``cache_of``), one per (length, step, settings): built and compiled once.

    It never travels with the model: a deep copy or a pickle of the model gets an empty cache. A decoder
    is lent to one caller at a time; a second caller meanwhile gets a fresh one that is not kept.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[tuple, object]] = {}
        self._busy: set[tuple] = set()

    def __deepcopy__(self, memo: dict) -> DecoderCache:
        return DecoderCache()

    def __reduce__(self):  # noqa: ANN204
        return (DecoderCache, ())

    @contextmanager
    def lend(self, model: nn.Module, key: tuple, make) -> Iterator[object]:  # noqa: ANN001
        """The decoder for ``key`` (built by ``make()`` when missing or when the weights changed)."""
        fingerprint = _fingerprint(model)
        with self._lock:
            entry = self._entries.get(key)
            shared = key not in self._busy
            if shared:
                self._busy.add(key)
        try:
            if not shared:
                yield make()
                return
            if entry is None or entry[0] != fingerprint:
                entry = (fingerprint, make())
                self._entries[key] = entry
            yield entry[1]
        finally:
            if shared:
                with self._lock:
                    self._busy.discard(key)


CACHE_ATTRIBUTE = "_squeezelab_decoders"


def cache_of(model: nn.Module) -> DecoderCache:
    """The model's decoder cache (created on first use; not a module, parameter or buffer)."""
    cache = model.__dict__.get(CACHE_ATTRIBUTE)
    if cache is None:
        cache = model.__dict__.setdefault(CACHE_ATTRIBUTE, DecoderCache())
    return cache


@dataclass
class ChosenDecoder:
    """A decoder checked against the model's forward, and what choosing it found out."""

    decoder: object  # StaticCacheDecoder | DynamicCacheDecoder
    step: str
    notes: list[str]
    deviation: float  # check_exact's figure
    tolerance: float
    compile_s: float | None  # how long its compilation took (None: not compiled)
    compiled_now: bool  # compiled during this call (False: reused, compiled earlier in this process)

    @property
    def loop(self) -> str:
        return self.decoder.loop


def _try_step(model: nn.Module, prompt: torch.Tensor, step: str, decoder, notes: list[str]) -> float | None:  # noqa: ANN001
    """The decoder's deviation from the forward, or None (with a note) when it cannot be used."""
    deviation = check_exact(decoder, model, prompt)
    allowed = tolerance(model)
    if decoder.failure:
        notes.append(f"{step}: {decoder.failure}")
        return None
    if not deviation <= allowed:  # also catches NaN
        notes.append(f"{step}: logits differ from the model's forward by {deviation:.2g} of their range "
                     f"(tolerance {allowed:g}); not used")
        return None
    return deviation


@contextmanager
def open_decoder(model: nn.Module, prompt: torch.Tensor, max_len: int, compile: bool | None = None,
                 settings: CompileSettings = DEFAULT_SETTINGS) -> Iterator[ChosenDecoder]:
    """The fastest decoder whose logits equal the model's forward on ``prompt`` [1, P] and a few greedy
    tokens, lent for the ``with`` block (reused, compiled, from the model's ``DecoderCache``)."""
    plan = plan_steps(model, compile, max_len)
    notes = list(plan.notes)
    steps = plan.steps + tuple(s for s in ("eager", "dynamic") if s not in plan.steps and
                               (s == "dynamic" or "dynamic" not in plan.steps))
    for step in steps:
        # inductor writes the thread count into the C++ it generates: another count means another compile
        key = (max_len, step, (settings, torch.get_num_threads()) if step.endswith("compiled") else None)
        with ExitStack() as stack:
            try:
                decoder = stack.enter_context(
                    cache_of(model).lend(model, key, lambda step=step: build(model, max_len, step, settings)))
                already = decoder.compile_s
                deviation = _try_step(model, prompt, step, decoder, notes)
            except (ValueError, RuntimeError) as exc:  # this step cannot run the model after all: the next one
                notes.append(f"{step}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            if deviation is None:
                continue
            yield ChosenDecoder(decoder, step, notes, deviation, tolerance(model), decoder.compile_s,
                                bool(decoder.compile_s) and not already)
            return
    raise RuntimeError("no decoder reproduced the model's forward: " + "; ".join(notes))
