"""The proxy cost of one compressed matrix from calibration statistics: pure functions on tensors.

With ``H = 2/N X^T X`` (``HessianAccumulator.hessian``) the layer's output error over the calibration
tokens is ``||X dW^T||^2 / N = tr(dW H dW^T) / 2`` for ``dW = W - W'``: the second-order term of the
layer's reconstruction loss that OBS, GPTQ and SparseGPT minimize, and HAWQ's weighting of a layer's
perturbation by curvature. ``diagonal_cost`` keeps only H's diagonal (``sum_ij H_jj dW_ij^2``), which
ignores how input channels correlate and so overstates what GPTQ's correlated corrections cost.
"""

from __future__ import annotations

import torch


def output_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T) / 2 for dW = weight - approx [out, in] and hessian [in, in] (float64 sums)."""
    delta = weight.detach().double() - approx.detach().double()
    return float(((delta @ hessian.double()) * delta).sum()) / 2


def diagonal_cost(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """sum_ij H_jj (W - W')_ij^2 / 2: the output error with H's off-diagonal terms dropped."""
    delta = weight.detach().double() - approx.detach().double()
    return float((delta.square() * torch.diagonal(hessian).double()).sum()) / 2


def spearman(a: torch.Tensor | list[float], b: torch.Tensor | list[float]) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties share their mean rank)."""
    x, y = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if x.numel() < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denominator if denominator > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=torch.float64)
    for value in torch.unique(x):  # ties: the mean of their ranks
        tied = x == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
