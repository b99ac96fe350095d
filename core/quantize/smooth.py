"""SmoothQuant: move activation outliers into the weights before int8 activation quantization.

A few input channels of a transformer's linear layers carry activations 10-100x larger than the
rest, in every token. With one int8 range per token those channels set the range and the others
keep only a few levels. SmoothQuant (Xiao et al., 2023) divides channel j of the activations by
``s_j = max|X_j|^α / max|W_:,j|^(1-α)`` and multiplies column j of the weights by the same
``s_j``: ``(X / s)(s W)^T == X W^T`` exactly in real numbers, while the activations become flat
enough for 8 bits and the weights (quantized per output row) absorb the difference.

The division has to happen somewhere that costs nothing at run time (``core.quantize.fold``, shared with AWQ,
following each family's facts in ``core.architectures``):
* q/k/v and gate/up read the output of a norm: its weight is divided by s (by the norm's own formula);
* down_proj reads ``act(gate) * up``: up_proj's output rows are divided by s;
* o_proj reads the attention output, a mix of v rows: the value rows are divided by s
  (one s per key/value head channel, shared by the query heads of its group).
Linears whose input has no exact producer to divide (an MLP's output projection after GELU) stay unsmoothed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.architectures import family_of
from core.calibration.observe import input_feature_peaks
from core.layers import decoder_blocks, weight_matrix
from core.progress import CancelFn
from core.quantize.fold import FoldGroup, block_groups, fold_, share_over_heads, unsupported_reason

__all__ = ["SmoothReport", "smooth_", "unsupported_reason"]


@dataclass(frozen=True)
class SmoothReport:
    alpha: float
    layers: int  # linear layers whose inputs were smoothed
    max_ratio_before: float  # worst max|X_j| / median_j max|X_j| over smoothed inputs
    max_ratio_after: float

    def as_dict(self) -> dict:
        return {"alpha": self.alpha, "layers": self.layers, "max_ratio_before": self.max_ratio_before,
                "max_ratio_after": self.max_ratio_after}


def _input_ranges(model: nn.Module, groups: list[FoldGroup], calibration: torch.Tensor,
                  cancel: CancelFn | None) -> dict[nn.Module, torch.Tensor]:
    """max |x_j| over all calibration tokens of the input of each group's first reader."""
    modules = [group.readers[0] for group in groups]
    peaks = input_feature_peaks(model, modules, calibration, "smoothing", cancel=cancel)
    return dict(zip(modules, peaks, strict=True))


def _scales(x_range: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_range = torch.stack([w.detach().abs().amax(dim=0).float().to(x_range.device) for w in weights]).amax(dim=0)
    s = x_range.clamp(min=1e-5).pow(alpha) / w_range.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def _spread(x_range: torch.Tensor) -> float:
    return float(x_range.max() / x_range.median().clamp(min=1e-8))


@torch.no_grad()
def smooth_(model: nn.Module, calibration: torch.Tensor, alpha: float = 0.5,
            cancel: CancelFn | None = None) -> SmoothReport:
    """Fold SmoothQuant scales into ``model`` in place; the float model computes the same function."""
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(f"cannot smooth this model: {reason}")
    if not 0 < alpha < 1:
        raise ValueError(f"smoothing strength alpha must be in (0, 1), e.g. 0.5; got {alpha}")
    family = family_of(model)
    groups = [group for block in decoder_blocks(model)[1] for group in block_groups(block, family)]
    ranges = _input_ranges(model, groups, calibration, cancel)
    before, after, count = 1.0, 1.0, 0
    for group in groups:
        x_range = ranges[group.readers[0]]
        s = _scales(x_range, [weight_matrix(reader) for reader in group.readers], alpha)
        if group.heads is not None:
            s = share_over_heads(s, group.heads)
        fold_(group, s)
        before, after = max(before, _spread(x_range)), max(after, _spread(x_range / s))
        count += len(group.readers)
    return SmoothReport(alpha, count, before, after)
