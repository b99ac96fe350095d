"""Upper bounds on the counts a recipe asks for, from the text it reads and the memory that is free.

Checked before any weights are loaded (``core.recipe.preflight``). Each refusal gives the request, what it
would take, what the text and the machine offer, and the largest value that fits, e.g.::

    calibration asks for 100,000,000,000 windows of 256 tokens (25,600,000,000,000 tokens, ≈ 46,284,800.0 GB
    held by the block-by-block walk); the calibration text 'default (sample-train)' has 1,205,221 tokens and
    cpu has 21.2 GB free, 20.9 GB of it beyond the weights and PyTorch's own working memory; use at most 4,707
    samples at seqlen 256, or a longer text

Memory figures are estimates of the working memory each stage holds (see the ``*_bytes`` functions of
``core.calibration.spec``, ``core.evaluate.spec`` and ``core.distill.spec``).
"""

from __future__ import annotations

from dataclasses import dataclass

from core import data
from core.calibration.spec import CalibrationSpec, walk_bytes_per_sample, walk_fixed_bytes
from core.checks import require
from core.distill.spec import HOLDOUT, DistillSpec, training_bytes_per_window, training_fixed_bytes
from core.errors import InsufficientMemoryError, TextSourceError
from core.evaluate.spec import EvalSpec, decode_bytes, scoring_bytes
from core.models.device import ModelDims

GB = 1e9


def size(count: int) -> str:
    """Bytes as people read them: '≈ 1.9 MB', '≈ 81,920.0 GB'."""
    return f"≈ {count / GB:,.1f} GB" if count >= 0.1 * GB else f"≈ {count / 1e6:,.1f} MB"
PROBE_CHARS = 200_000  # a longer text is first measured on evenly spaced slices of this many characters in all
PROBE_SLICES = 8
ESTIMATE_MARGIN = 2  # an estimated token count stands only where it is at least twice what is needed
NOTHING_FITS = "not even the smallest setting fits: free some memory, or use a smaller model or a 16-bit dtype"
RECOVERY_BATCH = 8  # windows per step of the masked fine-tune after pruning (core.prune.recovery)
# PyTorch's own working memory beside the tensors the estimates count (allocator slack, autograd, threads):
# on the sample teacher, CPU, peak RSS grew ~0.25 GB more than estimated in a distillation step at batch 8
# and ~0.03 GB more in a GPTQ walk of 128 samples.
FRAMEWORK_BYTES = 300_000_000


@dataclass(frozen=True)
class TextTokens:
    """How many tokens a text source holds: counted, or (far above what is needed) estimated from slices."""

    source: str
    tokens: int
    exact: bool

    def describe(self, role: str) -> str:
        return f"the {role} text {self.source!r} has {'' if self.exact else 'about '}{self.tokens:,} tokens"


def count_tokens(tokenizer, source: str, default: str, needed: int) -> TextTokens:
    """The tokens of ``source`` (``default`` is what "default" means for the model), at least enough to tell
    whether ``needed`` fit: a long text is first estimated from slices, and counted whole when that is close."""
    text = data.load_text(source, default=default).text
    source = f"{source} ({default})" if source.strip() == data.DEFAULT_SOURCE else source
    if len(text) > PROBE_CHARS:
        step, width = len(text) // PROBE_SLICES, PROBE_CHARS // PROBE_SLICES
        probed = sum(data.tokenize(tokenizer, text[i * step: i * step + width]).numel() for i in range(PROBE_SLICES))
        estimate = probed * len(text) // (PROBE_SLICES * width)
        if estimate >= ESTIMATE_MARGIN * needed:
            return TextTokens(source, estimate, exact=False)
    return TextTokens(source, int(data.tokenize(tokenizer, text).numel()), exact=True)


@dataclass
class Budget:
    """Free memory on the run's device, and the part of it the run's weights take whatever the counts."""

    device: str
    free: int
    held: int = FRAMEWORK_BYTES  # and the weights: the base model (unless already loaded), its working copy, ...

    @property
    def room(self) -> int:
        """Bytes left for working memory (calibration activations, logits, training state)."""
        return self.free - self.held

    def describe(self) -> str:
        return (f"{self.device} has {size(self.free)[2:]} free, {size(max(self.room, 0))[2:]} of it beyond the "
                "weights and PyTorch's own working memory")


def check_calibration(spec: CalibrationSpec, seqlen: int, dims: ModelDims, text: TextTokens, budget: Budget,
                      walk: bool) -> int:
    """Refuse more calibration windows than the text or free memory holds; returns the tokens asked for.

    ``walk``: a step walks the blocks with the samples (GPTQ, Wanda, SparseGPT), which holds every sample's
    activations; otherwise only the token ids are held (whole-model passes such as SmoothQuant's).
    """
    if text.tokens <= seqlen:
        raise TextSourceError(f"{text.describe('calibration')}; one window of seqlen={seqlen} needs more. "
                              f"Use a longer text or a calibration seqlen of at most {max(text.tokens - 1, 2)}")
    per_sample = walk_bytes_per_sample(seqlen, dims) if walk else 8 * seqlen
    fixed = walk_fixed_bytes(seqlen, dims)
    by_text, by_memory = text.tokens // seqlen, max(budget.room - fixed, 0) // per_sample
    if spec.samples <= min(by_text, by_memory):
        return spec.samples * seqlen
    held = "held by the block-by-block walk" if walk else "of token ids"
    fits = min(by_text, by_memory)
    advice = (f"use at most {fits:,} samples at seqlen {seqlen}" + (", or a longer text" if by_text < by_memory
                                                                     else ", or a smaller seqlen")) if fits else \
        NOTHING_FITS
    raise InsufficientMemoryError(
        f"calibration asks for {spec.samples:,} windows of {seqlen} tokens ({spec.samples * seqlen:,} tokens, "
        f"{size(fixed + spec.samples * per_sample)} {held}); {text.describe('calibration')} and "
        f"{budget.describe()}; {advice}")


def check_evaluation(spec: EvalSpec, dims: ModelDims, text: TextTokens, budget: Budget, compare: bool,
                     batch: int) -> int:
    """Refuse an evaluation seqlen the model, the text or free memory cannot take; returns the windows scored."""
    seqlen = spec.resolved_seqlen(dims.context)
    if text.tokens < seqlen:
        raise TextSourceError(f"{text.describe('evaluation')} but one window needs at least {seqlen}; use a longer "
                              f"text or a smaller evaluation seqlen (at most {max(text.tokens, 2)})")
    if scoring_bytes(seqlen, dims, compare, batch) > budget.room:
        fits = _largest(lambda n: scoring_bytes(n, dims, compare, batch) <= budget.room, seqlen)
        advice = f"use an evaluation seqlen of at most {fits}" if fits else NOTHING_FITS
        raise InsufficientMemoryError(
            f"evaluation windows of {seqlen} tokens need {size(scoring_bytes(seqlen, dims, compare, batch))} "
            f"to score ({batch} at a time, logits over {dims.vocab:,} tokens); {budget.describe()}; {advice}")
    if spec.latency:
        _check_latency(spec, dims, budget)
    windows = text.tokens // seqlen
    return windows if spec.max_windows is None else min(windows, spec.max_windows)


def _check_latency(spec: EvalSpec, dims: ModelDims, budget: Budget) -> None:
    for name in ("prompt_tokens", "new_tokens"):
        value = getattr(spec, name)
        require(value <= dims.context, f"evaluation.{name}={value:,} is longer than the model's context "
                                       f"({dims.context:,} tokens); use at most {dims.context:,}")
    tokens = min(spec.prompt_tokens + spec.new_tokens, dims.context)
    if decode_bytes(tokens, dims) > budget.room:
        raise InsufficientMemoryError(f"timing a prompt of {spec.prompt_tokens} and {spec.new_tokens} new tokens "
                                      f"needs {size(decode_bytes(tokens, dims))}; {budget.describe()}; use "
                                      "fewer prompt_tokens / new_tokens or latency: false")


def check_distill(spec: DistillSpec, seqlen: int, student: ModelDims, teacher: ModelDims, text: TextTokens,
                  eval_text: TextTokens | None, budget: Budget) -> None:
    """Refuse batches and held-out windows the training text cannot fill, and a batch free memory cannot hold."""
    batch, held_out = spec.batch_size * seqlen, spec.eval_windows * seqlen if spec.eval_text == HOLDOUT else 0
    if text.tokens < batch + held_out:
        room = text.tokens // seqlen
        raise TextSourceError(
            f"{text.describe('training')}; one batch needs batch_size x seqlen = {spec.batch_size} x {seqlen} = "
            f"{batch:,}" + (f" and the held-out tail {spec.eval_windows} x {seqlen} = {held_out:,}" if held_out else "")
            + f"; use a longer text, or at most {room:,} windows of {seqlen} tokens in all (batch_size"
            + (" + eval_windows)" if held_out else ")"))
    if eval_text is not None and eval_text.tokens < seqlen:
        raise TextSourceError(f"{eval_text.describe('held-out')} but one window needs {seqlen}; use a longer "
                              "eval_text or a smaller seqlen")
    per_window = training_bytes_per_window(seqlen, student, teacher, spec.hidden_weight > 0)
    check_training("distillation", spec.batch_size, seqlen, per_window, training_fixed_bytes(student), budget,
                   "batch_size")


def check_recovery(steps: int, seqlen: int, dims: ModelDims, budget: Budget) -> None:
    """The masked fine-tune after pruning trains on ``RECOVERY_BATCH`` calibration windows a step."""
    if steps:
        per_window = training_bytes_per_window(seqlen, dims, dims, hidden_states=False)
        check_training("recovery fine-tuning", RECOVERY_BATCH, seqlen, per_window, training_fixed_bytes(dims),
                       budget, "calibration seqlen")


def check_training(what: str, batch: int, seqlen: int, per_window: int, fixed: int, budget: Budget,
                   knob: str) -> None:
    """Refuse a training step whose activations and optimizer state do not fit beside the weights."""
    needed = fixed + batch * per_window
    if needed <= budget.room:
        return
    fits = max(budget.room - fixed, 0) // per_window
    advice = f"use a batch_size of at most {fits}, or a smaller seqlen" if knob == "batch_size" and fits else \
        f"use a smaller {knob}" if fits else NOTHING_FITS
    raise InsufficientMemoryError(
        f"{what} trains on {batch} windows of {seqlen} tokens a step, which needs {size(needed)} "
        f"(activations kept for the backward pass, logits, gradients and AdamW state); {budget.describe()}; "
        f"{advice}")


def _largest(fits, upper: int) -> int:  # noqa: ANN001 - a predicate on whole numbers
    """The largest n in [2, upper] with fits(n) (fits is monotone: true below some n); 0 when none."""
    if not fits(2):
        return 0
    low, high = 2, upper
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
