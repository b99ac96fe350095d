"""OWL (Yin et al. 2023): outlier-weighted layer-wise sparsity, pure functions on tensors.

Blocks whose Wanda scores |W_ij| * ||X_j|| hold more outliers (scores above ``m`` times their block's
mean) suffer more from pruning, so they keep more weights. With ``D_b`` each block's outlier share,
the densities are ``(1 - S) + lambda_b - mean(lambda)`` where ``lambda_b`` maps ``D`` linearly onto
``[0, 2 * lambda]``: every block's sparsity stays within ``2 * lambda`` of the target ``S`` and,
the blocks being of equal size, the whole model keeps exactly ``S``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_LAMBDA = 0.08  # the paper's setting for LLaMA (the largest spread around the target)
DEFAULT_M = 5.0  # outliers: scores above m x the mean score


def outlier_share(scores: Sequence[torch.Tensor], m: float) -> float:
    """Share of the entries of ``scores`` (every layer of a block) above ``m`` times their mean."""
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_sparsities(shares: Sequence[float], target: float, lam: float) -> list[float]:
    """Per-block sparsities from the blocks' outlier shares, averaging to ``target`` (see the module docstring).

    Equal shares (or ``lam`` 0) give every block the target. Refused when a block would leave [0, 1).
    """
    shares_t = torch.tensor(list(shares), dtype=torch.float64)
    spread = shares_t.max() - shares_t.min()
    if len(shares) == 0 or spread == 0 or lam == 0:
        return [float(target)] * len(shares)
    mapped = (shares_t - shares_t.min()) / spread * (2 * lam)
    sparsity = target - (mapped - mapped.mean())
    if sparsity.min() < 0 or sparsity.max() >= 1:
        raise ValueError(f"OWL with lambda {lam:g} around {target:.0%} would set a block's sparsity to "
                         f"{float(sparsity.min()):.1%}..{float(sparsity.max()):.1%}, outside [0, 1); use a smaller "
                         "lambda")
    return [float(x) for x in sparsity]
