"""GPTQ (Frantar et al. 2022) on one matrix: a pure function on tensors.

Columns are quantized one at a time (in order of decreasing H_jj with ``act_order``); each column's
rounding error is spread over the columns not yet quantized through the Cholesky factor of H^-1
(``core.calibration.hessian.obs_column_sweep``, shared with SparseGPT). Group scales are found on the
updated weights when a group starts; with act-order they are fixed up front on the original groups
("static" groups), so the stored layout stays that of RTN.
"""

from __future__ import annotations

import torch

from core.calibration.hessian import drop_dead_inputs_, inverse_hessian_factor, obs_column_sweep
from core.quantize.scheme import QuantizedMatrix, QuantScheme, qparams


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scheme: QuantScheme,
    blocksize: int = 128,
    percdamp: float = 0.01,
    act_order: bool = False,
) -> QuantizedMatrix:
    """GPTQ codes for ``weight`` [out, in] given ``hessian`` [in, in] ∝ X^T X (computed in float32)."""
    w = weight.detach().to(torch.float32, copy=True)
    h = hessian.detach().to(w.device, torch.float32, copy=True)
    rows, columns = w.shape
    width = scheme.group_width(columns)
    drop_dead_inputs_(w, h)
    static = qparams(w, scheme) if act_order or scheme.group_size is None else None
    order = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(columns)
    w, h = w[:, order], h[order][:, order]
    u = inverse_hessian_factor(h, percdamp, "GPTQ")
    groups = columns // width
    scale, zero = static if static is not None else (w.new_empty(rows, groups), w.new_empty(rows, groups))
    codes = torch.empty(rows, columns, dtype=torch.uint8, device=w.device)
    low, high = scheme.code_bounds()

    def round_column(index: int, block: torch.Tensor, j: int) -> torch.Tensor:
        group = int(order[index]) // width
        if static is None and index % width == 0:  # a group begins: its scales from the updated weights
            group_scale, group_zero = qparams(block[:, j : j + width], scheme)
            scale[:, group], zero[:, group] = group_scale[:, 0], group_zero[:, 0]
        s, z = scale[:, group], zero[:, group]
        q = torch.round(block[:, j] / s).add_(z).clamp_(low, high)
        codes[:, index] = q.to(torch.uint8)
        return (q - z) * s

    if not act_order and scheme.group_size is not None:
        blocksize = max(width, blocksize // width * width)  # a group never straddles two blocks
    obs_column_sweep(w, u, blocksize, round_column)
    return QuantizedMatrix(codes[:, torch.argsort(order)], scale, zero)
