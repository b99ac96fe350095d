"""SparseGPT (Frantar & Alistarh 2023) on one matrix: a pure function on tensors.

Columns are processed left to right in blocks; each block's mask is chosen from w^2 / [H^-1]_jj^2
on the weights as updated so far (for N:M, per group of ``m`` columns, keeping ``n``). Pruning a
weight updates the not-yet-processed weights of its row through the Cholesky factor of H^-1 (the
optimal-brain-surgeon sweep of ``core.calibration.hessian``, shared with GPTQ).
"""

from __future__ import annotations

import torch

from core.calibration.hessian import drop_dead_inputs_, inverse_hessian_factor, obs_column_sweep
from core.prune.masks import drop_lowest, fraction_count, nm_mask


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one matrix: (pruned weight [out, in] in ``weight``'s dtype, keep-mask [out, in]).

    ``hessian`` [in, in] ∝ X^T X. With ``n``:``m`` the mask keeps ``n`` of every ``m`` consecutive
    columns and ``sparsity`` is ignored; otherwise every block drops its quota of the exact overall
    sparsity. Computes in float32 (float64 if ``weight`` is float64) on ``weight``'s device.
    """
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(dtype=dtype, copy=True)
    h = hessian.detach().to(w.device, dtype, copy=True)
    rows, cols = w.shape
    if n:
        nm_mask(w[:1], n, m)  # refuses a width that is not a multiple of m
        blocksize = max(m, blocksize // m * m)  # groups never straddle two blocks
    drop_dead_inputs_(w, h)
    u = inverse_hessian_factor(h, percdamp, "SparseGPT")
    pruned = torch.zeros_like(w, dtype=torch.bool)
    diagonal = torch.diagonal(u)

    def start_block(start: int, end: int, block: torch.Tensor, u_block: torch.Tensor) -> None:
        if not n:  # per-block quotas whose totals add up to the exact overall sparsity
            quota = fraction_count(sparsity, rows * end) - fraction_count(sparsity, rows * start)
            scores = block.square() / diagonal[start:end].square()
            pruned[:, start:end] = ~drop_lowest(scores.reshape(1, -1), quota).reshape(scores.shape)

    def round_column(index: int, block: torch.Tensor, j: int) -> torch.Tensor:
        if n and j % m == 0:
            group = block[:, j : j + m].square() / diagonal[index : index + m].square()
            pruned[:, index : index + m] = ~nm_mask(group, n, m)
        return block[:, j].masked_fill(pruned[:, index], 0.0)

    obs_column_sweep(w, u, blocksize, round_column, start_block)
    return w.to(weight.dtype), ~pruned
