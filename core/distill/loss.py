"""The knowledge-distillation loss as plain tensor functions (Hinton et al. 2015).

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, next tokens)
           [+ beta * MSE(proj(h_s), h_t)]

Every term is a mean over the real (non-padding) predicted positions. Logits are upcast to float32
before ``log_softmax``: in fp16 / bf16 the exponentials of large logits overflow or lose all
precision, and the KL of two nearly equal distributions is a small difference of large numbers.

The T^2 factor keeps the KD gradient's magnitude independent of T: d KL / d z_s = (p_s - p_t) / T,
and for large T the softened probabilities differ by O(1 / T), so the gradient shrinks like 1 / T^2
without it. (A formula still seen in tutorials, the cross-entropy of the student's log-probabilities
against the *raw* teacher logits divided by T, is not a divergence at all: it is not zero when the
student equals the teacher and can be negative.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LossParts:
    """The total loss (with its graph) and each term as a plain float for the training curve."""

    total: torch.Tensor
    kd: float
    ce: float
    hidden: float


def predicted_mask(attention_mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor:
    """Bool [b, t-1]: positions that predict a real next token (the token and its successor are real)."""
    if attention_mask is None:
        return torch.ones(input_ids.shape[0], input_ids.shape[1] - 1, dtype=torch.bool, device=input_ids.device)
    real = attention_mask.bool()
    return real[:, :-1] & real[:, 1:]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` [b, t] over the True entries of ``mask`` [b, t] (0 when there are none)."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` per position, averaged over ``mask``.

    Logits are [b, t, v] (any float dtype; the math runs in float32), ``mask`` is bool [b, t].
    Returns a float32 scalar; its gradient flows into ``student_logits`` only.
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    # sum_v p_t (log p_t - log p_s); written with log-probabilities so no 0 * log 0 appears
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # [b, t]
    if mask is None:
        mask = torch.ones_like(kl, dtype=torch.bool)
    return temperature**2 * _masked_mean(kl, mask)


def next_token_ce(student_logits: torch.Tensor, targets: torch.Tensor,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of logits [b, t, v] against target ids [b, t], averaged over ``mask`` [b, t]."""
    nll = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), targets.reshape(-1),
                          reduction="none").view(targets.shape)
    if mask is None:
        mask = torch.ones_like(targets, dtype=torch.bool)
    return _masked_mean(nll, mask)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, projection: nn.Module | None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between ``projection(h_s)`` [b, t, d_t] and ``h_t`` [b, t, d_t] over ``mask`` [b, t].

    ``projection`` maps the student's width d_s to the teacher's d_t (learned with the student);
    None when the widths are equal.
    """
    projected = projection(student_hidden.float()) if projection is not None else student_hidden.float()
    squared = (projected - teacher_hidden.detach().float()).pow(2).mean(dim=-1)  # [b, t]
    if mask is None:
        mask = torch.ones_like(squared, dtype=torch.bool)
    return _masked_mean(squared, mask)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                 temperature: float, alpha: float, attention_mask: torch.Tensor | None = None,
                 hidden: torch.Tensor | None = None, hidden_weight: float = 0.0) -> LossParts:
    """The combined loss on one batch; logits [b, t, v], ``input_ids`` / ``attention_mask`` [b, t].

    Position i predicts token i + 1, so the last position (no next token) is left out of every term.
    ``hidden`` is an already computed hidden-state term (``hidden_mse``), weighted by ``hidden_weight``.
    A term whose weight is 0 is not computed (alpha = 0 is plain next-token training).
    """
    mask = predicted_mask(attention_mask, input_ids)
    student, teacher = student_logits[:, :-1], teacher_logits[:, :-1]
    zero = student_logits.new_zeros((), dtype=torch.float32)
    kd = kd_kl(student, teacher, temperature, mask) if alpha > 0 else zero
    ce = next_token_ce(student, input_ids[:, 1:], mask) if alpha < 1 else zero
    total = alpha * kd + (1 - alpha) * ce
    if hidden is not None and hidden_weight > 0:
        total = total + hidden_weight * hidden
    hidden_value = float(hidden.detach()) if hidden is not None else 0.0
    return LossParts(total, float(kd.detach()), float(ce.detach()), hidden_value)
