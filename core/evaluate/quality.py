"""Quality on fixed windows: perplexity, top-1 accuracy, and agreement with a base model.

Perplexity follows the GPTQ / SparseGPT / Wanda protocol: the text tokenized once, cut into
non-overlapping windows of ``seqlen`` (tail dropped), ``exp(mean NLL)`` over every predicted
token of every window. Each window is scored on its own (no context carried across windows).
When the tokenizer adds a BOS token, every window starts with it (``core.data.windows``) and the
scored tokens are the text's that follow. Each window's summed NLL is kept too: the windows are the
units of the perplexity's 95% interval and of the paired comparison with a base model
(``core.evaluate.intervals``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from core.errors import CancelledError
from core.evaluate.intervals import PairedComparison, PerplexityInterval, paired_comparison, perplexity_interval
from core.layers import model_device
from core.progress import CancelFn, ProgressFn


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
    window_nll: tuple[float, ...] = ()  # summed NLL of each window, in order
    window_tokens: tuple[int, ...] = ()  # predicted tokens of each window
    base_window_nll: tuple[float, ...] | None = None  # the base model's, on the same windows

    def as_dict(self) -> dict:
        return asdict(self)

    def interval(self) -> PerplexityInterval:
        """The perplexity's 95% interval over windows (None ends for a single window)."""
        return perplexity_interval(self.window_nll, self.window_tokens)

    def base_interval(self) -> PerplexityInterval | None:
        """The base model's perplexity interval on the same windows, when a base was scored."""
        return None if self.base_window_nll is None else perplexity_interval(self.base_window_nll, self.window_tokens)

    def vs_base(self) -> PairedComparison | None:
        """The paired comparison with the base on the same windows, when a base was scored."""
        if self.base_window_nll is None:
            return None
        return paired_comparison(self.window_nll, self.base_window_nll, self.window_tokens)


@dataclass(frozen=True)
class WindowScore:
    """Sums over one batch of windows; perplexity and accuracy come from their totals."""

    nll_sum: float
    base_nll_sum: float
    correct: int
    agree: int
    kl_sum: float
    count: int
    window_nll: tuple[float, ...] = ()  # per window of the batch: its summed NLL
    base_window_nll: tuple[float, ...] = ()  # the same for the base model (empty without one)


@torch.inference_mode()
def _logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    # use_cache=False: no KV cache is built for a single scoring pass.
    return model(input_ids=batch.to(model_device(model)), use_cache=False).logits


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
    per_window = tuple(nll.view(batch.shape).double().sum(dim=1).tolist())  # ignored positions add 0
    if base_logits is None:
        return WindowScore(float(nll.double().sum()), 0.0, correct, 0, 0.0, count, per_window)
    predicted = logits[:, :-1, :].float()
    log_probs = F.log_softmax(predicted, dim=-1)
    base_log_probs = F.log_softmax(base_logits[:, :-1, :].float().to(predicted.device), dim=-1)
    # KL(base || model) summed over positions: sum_v p_base * (log p_base - log p_model)
    kl_sum = float((base_log_probs.exp() * (base_log_probs - log_probs)).sum())
    base_nll = -base_log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1).double()  # [b, t - 1]
    return WindowScore(
        nll_sum=float(nll.double().sum()),
        base_nll_sum=float(base_nll.sum()),
        correct=correct,
        agree=int((base_log_probs.argmax(dim=-1) == top1).sum()),
        kl_sum=kl_sum,
        count=count,
        window_nll=per_window,
        base_window_nll=tuple(base_nll.sum(dim=1).tolist()),
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
        batch_size = 8 if model_device(model).type == "cuda" else 1
    totals = [0.0, 0.0, 0, 0, 0.0, 0]
    window_nll: list[float] = []
    base_window_nll: list[float] = []
    for start in range(0, windows.shape[0], batch_size):
        if cancel is not None and cancel():
            raise CancelledError(f"evaluation cancelled after {start} of {windows.shape[0]} windows")
        batch = windows[start : start + batch_size]
        base_logits = _logits(base, batch) if base is not None else None
        score = score_batch(_logits(model, batch), batch, base_logits)
        parts = (score.nll_sum, score.base_nll_sum, score.correct, score.agree, score.kl_sum, score.count)
        for index, value in enumerate(parts):
            totals[index] += value
        window_nll.extend(score.window_nll)
        base_window_nll.extend(score.base_window_nll)
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
        window_nll=tuple(window_nll),
        window_tokens=(int(windows.shape[1]) - 1,) * int(windows.shape[0]),
        base_window_nll=tuple(base_window_nll) if base is not None else None,
    )


def unigram_perplexity(ids: torch.Tensor, windows: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of the scored tokens (every window but its first position) under a unigram model of the whole
    text ``ids``, held out (each scored occurrence left out of its own count) and add-one smoothed over the
    vocabulary: ``p(t) = c_t / (N - 1 + V)``. A model that ignored all context would score about this; a
    working language model scores well below it. Leaving the token out keeps a short text honest: in-sample
    frequencies would reward every token seen once with probability 1/N."""
    counts = torch.bincount(ids.reshape(-1).long(), minlength=vocab_size).double()
    targets = windows[:, 1:].reshape(-1).long()
    log_p = (counts[targets].clamp(min=1.0) / (ids.numel() - 1 + counts.numel())).log()
    return math.exp(float(-log_p.mean()))
