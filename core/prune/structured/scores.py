"""Which units go: importance scores and counts, pure functions on tensors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from core.checks import require


def removal_count(fraction: float, total: int) -> int:
    """Units to remove: ``fraction * total`` rounded half up, at least 1, at most ``total - 1``."""
    return min(total - 1, max(1, math.floor(fraction * total + 0.5)))


def lowest_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` lowest-scored indices of ``scores`` [n], ascending (ties: lower index first)."""
    return torch.argsort(scores, stable=True)[:count].sort().values


def channel_scores(inputs: Sequence[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """Weight-norm score per MLP channel: ||its rows in ``inputs`` [c, h]|| * ||its column in ``output`` [h, c]||.

    A channel's contribution to the block output scales with both; either being zero makes it zero.
    """
    rows = torch.stack([w.detach().float().pow(2).sum(dim=1) for w in inputs]).sum(dim=0).sqrt()
    return rows * output.detach().float().norm(dim=0)


def group_scores(values: torch.Tensor, output: torch.Tensor, groups: int) -> torch.Tensor:
    """Weight-norm score per KV group: ||its v_proj rows|| * ||its o_proj columns||.

    ``values`` is v_proj's weight [groups * head_dim, h]; ``output`` is o_proj's [h, heads * head_dim].
    q/k only decide how a head mixes its values (softmax weights sum to one), so they cannot scale
    its output and are left out.
    """
    v = values.detach().float().reshape(groups, -1).norm(dim=1)
    o = output.detach().float().reshape(output.shape[0], groups, -1).permute(1, 0, 2).reshape(groups, -1)
    return v * o.norm(dim=1)


def group_activation_scores(input_norms: torch.Tensor, groups: int) -> torch.Tensor:
    """L2 norm per KV group of o_proj's input, from the norms of its features [heads * head_dim]."""
    return input_norms.pow(2).reshape(groups, -1).sum(dim=1).sqrt()


def residual_scores(delta_squares: torch.Tensor, input_squares: torch.Tensor) -> torch.Tensor:
    """Relative size of each block's residual update: ||out - in|| / ||in|| over calibration tokens."""
    return (delta_squares / input_squares.clamp_min(torch.finfo(torch.float32).tiny)).sqrt()


def evenly_spaced_middle(num_layers: int, count: int) -> tuple[int, ...]:
    """``count`` block indices spread evenly over 1 .. num_layers - 2 (never the first or the last)."""
    middle = list(range(1, num_layers - 1))
    require(count <= len(middle),
            f"dropping {count} of {num_layers} blocks without calibration data would touch the first or the "
            f"last block; name the blocks with layers=[...] or pass calibration token ids to rank them")
    return tuple(middle[math.floor((i + 0.5) * len(middle) / count)] for i in range(count))


def unit_rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of whole units (heads, groups) that are ``width`` rows each."""
    return (units[:, None] * width + torch.arange(width)).flatten()


def complement(total: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(total, dtype=torch.bool)
    keep[removed.cpu()] = False
    return keep.nonzero().flatten()
