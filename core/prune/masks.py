"""Pruning masks and scores: pure functions on tensors. A keep-mask is True where the weight stays."""

from __future__ import annotations

import torch

from core.errors import SpecError


def fraction_count(fraction: float, total: int) -> int:
    """round(fraction * total): how many of ``total`` a fraction means."""
    return int(round(fraction * total))


def threshold_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep-mask, shape of ``weight``: |w| >= threshold (compared in float32, like ``ThresholdPreview``)."""
    return weight.detach().abs().float() >= threshold


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask, shape of ``scores``: drops exactly round(sparsity * numel) lowest scores of the whole tensor."""
    return drop_lowest(scores.reshape(1, -1), fraction_count(sparsity, scores.numel())).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask for ``scores`` [out, in]: drops exactly round(sparsity * in) lowest scores in every row."""
    return drop_lowest(scores, fraction_count(sparsity, scores.shape[1]))


def drop_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask for ``scores`` [rows, cols] with the ``count`` lowest of each row dropped (ties by position)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        lowest = torch.argsort(scores, dim=1, stable=True)[:, :count]
        keep.scatter_(1, lowest, False)
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask for ``scores`` [out, in]: the ``n`` largest of every ``m`` consecutive columns in each row."""
    rows, cols = scores.shape
    if not 0 < n < m:
        raise SpecError(f"N:M needs 0 < N < M, got {n}:{m}")
    if cols % m:
        raise SpecError(f"an {n}:{m} pattern groups {m} consecutive input columns, but this matrix has {cols} "
                        f"input columns ({cols} is not a multiple of {m}); exclude the layer or pick an M dividing it")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """Wanda importance [out, in] = |W| [out, in] * ||X_j||_2 [in] (float32)."""
    return weight.detach().abs().float() * act_norm.to(weight.device, torch.float32)


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks dropping exactly round(sparsity * total) smallest |w| across all ``weights`` (name -> [out, in])."""
    magnitudes = {name: weight.detach().abs().float().contiguous() for name, weight in weights.items()}
    flat = torch.cat([values.flatten() for values in magnitudes.values()])
    count = fraction_count(sparsity, flat.numel())
    cut = flat.kthvalue(count).values if count else flat.new_tensor(-1.0)
    ties = count - int((flat < cut).sum())  # weights equal to the cut that must go too, taken in layer order
    masks = {}
    for name, values in magnitudes.items():
        drop = values < cut
        tied = torch.nonzero((values == cut).flatten()).squeeze(1)[:ties]
        drop.view(-1)[tied] = True
        ties -= tied.numel()
        masks[name] = ~drop
    return masks
