"""Sparsity at any magnitude threshold, fast enough for a live slider: sorted |w| per layer, then binary search."""

from __future__ import annotations

import torch
from torch import nn

from core.checks import require
from core.layers import weight_matrix
from core.prune.apply import selected_layers
from core.prune.masks import fraction_count


class ThresholdPreview:
    """Sorted |w| of each selected layer (float32, CPU), so sparsity at any threshold is a binary search."""

    def __init__(self, sorted_magnitudes: dict[str, torch.Tensor]) -> None:
        self.sorted = sorted_magnitudes
        self.total = sum(values.numel() for values in sorted_magnitudes.values())

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ()):
        """Read every selected block linear layer once (see ``core.layers.block_linear_layers``)."""
        layers = selected_layers(model, include, exclude)
        return cls({name: torch.sort(weight_matrix(layer).detach().abs().float().flatten().cpu()).values
                    for name, layer in layers})

    def sparsity_at(self, threshold: float) -> tuple[float, dict[str, float]]:
        """(overall, per layer) fraction of weights with |w| < threshold: what ``threshold_mask`` would zero."""
        probe = torch.tensor([threshold], dtype=torch.float32)
        below = {name: int(torch.searchsorted(values, probe)) for name, values in self.sorted.items()}
        per_layer = {name: count / self.sorted[name].numel() for name, count in below.items()}
        return sum(below.values()) / max(self.total, 1), per_layer

    def threshold_for(self, sparsity: float) -> float:
        """The smallest |w| with round(sparsity * total) weights below it (the global quantile; ties shift it).

        Bisects float32 bit patterns, which order like the values for |w| >= 0: ~31 rounds of searchsorted.
        """
        require(0 <= sparsity < 1, f"sparsity must be in [0, 1), got {sparsity!r}")
        rank = fraction_count(sparsity, self.total) + 1  # the answer is the rank-th smallest |w|
        low, high = 0, _float_bits(max(float(values[-1]) for values in self.sorted.values()))
        while low < high:
            middle = (low + high) // 2
            probe = torch.tensor([middle], dtype=torch.int32).view(torch.float32)
            at_most = sum(int(torch.searchsorted(values, probe, right=True)) for values in self.sorted.values())
            low, high = (low, middle) if at_most >= rank else (middle + 1, high)
        return float(torch.tensor([low], dtype=torch.int32).view(torch.float32))


def _float_bits(value: float) -> int:
    return int(torch.tensor([value], dtype=torch.float32).view(torch.int32))
