"""AWQ (Lin et al. 2023): activation-aware scales, searched per group of layers and folded away exactly.

A few input channels carry much larger activations than the rest; their weights matter more to the
output. AWQ multiplies column j of the weights by ``s_j`` before rounding and divides the input by
``s_j`` (folded into the preceding norm or linear, ``core.quantize.fold``), so important columns get
finer steps relative to their size. For each group of layers that read the same input the scales are

    s = x^r / w^(1-r),  normalized so that sqrt(max(s) * min(s)) = 1,

with ``x`` the mean |x_j| of each input channel over the calibration tokens, ``w`` the mean over output rows
of |W| divided by its group's largest |W|, and ``r`` the ratio on a grid of ``grid`` points in [0, 1)
(both terms as in llm-compressor's ``duo_scaling``). The ratio kept is the one whose rounded weights
give the smallest output error on the calibration inputs, ``sum over the group of tr(dW H dW^T)`` with
``dW = W - Q(W diag(s)) diag(s)^-1`` and ``H`` the layers' input Hessian (so no activation is stored);
``s = 1`` (no scaling) is a candidate too, so the search never chooses worse than plain rounding.
Where the paper scores the output of the whole attention or MLP, this scores each linear's output.

Nothing here hooks a model: the walk (``core.quantize.apply``) gives each block's statistics to
``fold_block_``, which folds the scales and rescales the statistics to the inputs the layers now see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.calibration.hessian import HessianAccumulator
from core.layers import weight_matrix
from core.quantize.fold import FoldGroup, fold_, share_over_heads
from core.quantize.scheme import QuantScheme, fake_quantize

DEFAULT_GRID = 20


@dataclass(frozen=True)
class ScaleSearch:
    """The scales chosen for one group: the ratio r (None: no scaling won), and the errors compared."""

    scales: torch.Tensor
    ratio: float | None
    error: float
    unscaled_error: float


def activation_scale(stats: HessianAccumulator) -> torch.Tensor:
    """Mean |x_j| of each input channel over the tokens seen: [in]."""
    return stats.act_abs_sum / max(stats.tokens, 1)


def weight_scale(weights: list[torch.Tensor], schemes: list[QuantScheme | None]) -> torch.Tensor:
    """Mean over every output row of |W| relative to the largest |W| of its quantization group: [in]."""
    parts = []
    for weight, scheme in zip(weights, schemes, strict=True):
        rows, columns = weight.shape
        width = scheme.group_width(columns) if scheme is not None else columns
        grouped = weight.detach().float().abs().reshape(rows, columns // width, width)
        parts.append((grouped / grouped.amax(dim=2, keepdim=True).clamp(min=1e-12)).reshape(rows, columns))
    return torch.cat(parts).mean(dim=0)


def ratio_scales(x_scale: torch.Tensor, w_scale: torch.Tensor, ratio: float,
                 heads: tuple[int, int, int] | None = None) -> torch.Tensor:
    """``x^r / w^(1-r)`` normalized to a geometric mid-range of 1 (shared over query heads for o_proj)."""
    s = x_scale.clamp(min=1e-8).pow(ratio) / w_scale.clamp(min=1e-8).pow(1 - ratio)
    s = s.clamp(min=1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return share_over_heads(s, heads, "geomean") if heads is not None else s


def scaled_error(weights: list[torch.Tensor], schemes: list[QuantScheme | None], hessian: torch.Tensor,
                 s: torch.Tensor | None) -> float:
    """Output error of rounding ``W diag(s)`` and undoing the scale: sum of tr(dW H dW^T) over the group."""
    total = 0.0
    for weight, scheme in zip(weights, schemes, strict=True):
        if scheme is None:
            continue
        w = weight.detach().float()
        scaled = w if s is None else w * s
        rounded = fake_quantize(scaled, scheme)
        delta = w - (rounded if s is None else rounded / s)
        total += float(((delta @ hessian) * delta).sum())
    return total


def search_scales(weights: list[torch.Tensor], schemes: list[QuantScheme | None], stats: HessianAccumulator,
                  grid: int = DEFAULT_GRID, heads: tuple[int, int, int] | None = None) -> ScaleSearch:
    """The AWQ scales [in] of one group of layers reading the same input (see the module docstring)."""
    hessian = stats.hessian.float()
    x_scale, w_scale = activation_scale(stats), weight_scale(weights, schemes)
    columns = weights[0].shape[1]
    best = ScaleSearch(torch.ones(columns), None, scaled_error(weights, schemes, hessian, None), 0.0)
    best = ScaleSearch(best.scales, None, best.error, best.error)
    for step in range(grid):
        ratio = step / grid
        s = ratio_scales(x_scale, w_scale, ratio, heads)
        error = scaled_error(weights, schemes, hessian, s)
        if error < best.error:
            best = ScaleSearch(s, ratio, error, best.unscaled_error)
    return best


def rescale_statistics_(stats: HessianAccumulator, s: torch.Tensor) -> None:
    """The statistics of inputs ``x / s``, from those of ``x``: H / (s s^T), the squares / s^2, |x| / s."""
    s = s.to(stats.hessian.device, torch.float32)
    stats.hessian.div_(s.unsqueeze(0) * s.unsqueeze(1))
    stats.act_sq_sum.div_(s.square())
    stats.act_abs_sum.div_(s)


SchemeOf = Callable[[nn.Module], "QuantScheme | None"]
StatsOf = Callable[[nn.Module], "HessianAccumulator | None"]


@torch.no_grad()
def fold_block_(groups: list[FoldGroup], stats_of: StatsOf, scheme_of: SchemeOf,
                grid: int = DEFAULT_GRID) -> list[ScaleSearch]:
    """Search and fold the scales of each group of one block; the groups' statistics follow the fold.

    ``stats_of(reader)`` is the input statistics of a reader (None: not collected, the group is left as
    it is); ``scheme_of(reader)`` its quantization scheme (None: not quantized, it adds no error).
    """
    found = []
    for group in groups:
        stats = next((st for reader in group.readers if (st := stats_of(reader)) is not None), None)
        schemes = [scheme_of(reader) for reader in group.readers]
        if stats is None or stats.tokens == 0 or all(scheme is None for scheme in schemes):
            continue
        weights = [weight_matrix(reader) for reader in group.readers]
        search = search_scales(weights, schemes, stats, grid, group.heads)
        if search.ratio is not None:
            fold_(group, search.scales.to(weights[0].device))
            rescale_statistics_(stats, search.scales)
        found.append(search)
    return found
