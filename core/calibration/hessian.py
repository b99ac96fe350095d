"""Second-order algebra on tensors: X^T X accumulators, inverse-Hessian factors, the OBS column sweep.

Nothing here touches a model: tensors in, tensors out. GPTQ (``core.quantize.gptq``) and SparseGPT
(``core.prune.sparsegpt``) both solve a layer by sweeping its columns left to right, replacing each
column by a rounded (or pruned) version and spreading the error over the columns not yet done
through the Cholesky factor of H^-1 (optimal brain surgeon); ``obs_column_sweep`` is that skeleton,
and each method supplies only how a column is rounded.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

# rounded = round_column(index, block, j): the new values [out] of column j of ``block`` (column
# ``index`` of the whole matrix), given the block as updated so far.
RoundColumnFn = Callable[[int, torch.Tensor, int], torch.Tensor]
# start_block(start, end, block, u_block): called before the columns [start, end) are swept.
StartBlockFn = Callable[[int, int, torch.Tensor, torch.Tensor], None]


class HessianAccumulator:
    """Running input statistics of one linear layer.

    ``hessian`` [in, in] is ``2/N * X^T X`` over the N = ``hessian_tokens`` tokens folded into it
    (float32, kept as a running mean so it never grows with N); ``act_sq_sum`` [in] is the sum of
    squares of each input column over all ``tokens`` seen (Wanda's activation norms are its square
    root); ``act_abs_sum`` [in] the sum of |x_j| (AWQ's activation scale is its mean).
    ``max_hessian_tokens`` caps N: X^T X costs as much as the layer's own forward, and a caller that
    only reports errors from it does not need it over every token.
    """

    def __init__(self, columns: int, device: torch.device | str | None = None,
                 max_hessian_tokens: int | None = None) -> None:
        self.hessian = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.act_sq_sum = torch.zeros(columns, dtype=torch.float32, device=device)
        self.act_abs_sum = torch.zeros(columns, dtype=torch.float32, device=device)
        self.tokens = 0
        self.hessian_tokens = 0
        self.max_hessian_tokens = max_hessian_tokens

    def add_batch(self, x: torch.Tensor) -> None:
        """Fold in inputs ``x`` [..., in] (every leading dimension counts as tokens)."""
        x = x.detach().reshape(-1, self.hessian.shape[0]).to(self.hessian.device, torch.float32)
        if x.shape[0] == 0:
            return
        self.act_sq_sum += x.square().sum(dim=0)
        self.act_abs_sum += x.abs().sum(dim=0)
        self.tokens += x.shape[0]
        if self.max_hessian_tokens is not None:
            x = x[: max(self.max_hessian_tokens - self.hessian_tokens, 0)]
        if x.shape[0] == 0:
            return
        total = self.hessian_tokens + x.shape[0]
        # H_new = (N_old / N_new) * H_old + (2 / N_new) * X^T X
        self.hessian.addmm_(x.t(), x, beta=self.hessian_tokens / total, alpha=2.0 / total)
        self.hessian_tokens = total

    @property
    def act_norm(self) -> torch.Tensor:
        """||X_j||_2 per input column j: [in]."""
        return self.act_sq_sum.sqrt()


def reconstruction_error(w_old: torch.Tensor, w_new: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error ||(W - W') X||_F / ||W X||_F from H ∝ X^T X [in, in]; W, W' are [out, in].

    Uses ||A X||_F^2 = tr(A X^T X A^T), so no activations are stored; any scale of H cancels.
    """
    dtype = torch.float64 if torch.float64 in (w_old.dtype, w_new.dtype, hessian.dtype) else torch.float32
    h = hessian.to(w_old.device, dtype)
    old, delta = w_old.to(dtype), w_old.to(dtype) - w_new.to(w_old.device, dtype)
    error = float(((delta @ h) * delta).sum().clamp_min(0))
    signal = float(((old @ h) * old).sum())
    if signal <= 0:
        return 0.0 if error == 0 else math.inf
    return math.sqrt(error / signal)


def drop_dead_inputs_(weight: torch.Tensor, hessian: torch.Tensor) -> None:
    """In place: inputs that were always zero (H_jj = 0) get H_jj = 1 and zero weights [out, in], so H
    stays invertible and those weights, which never affect the output, do not steer the solve."""
    dead = torch.nonzero(torch.diagonal(hessian) == 0).squeeze(1)
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, method: str, attempts: int = 5) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp*I)^-1, so that U^T U = (H + damp*I)^-1; more damping if needed.

    ``damp`` is ``percdamp`` times the mean of diag(H) (SparseGPT and GPTQ both solve with this factor).
    """
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    mean_diag, damp = torch.diagonal(hessian).mean(), percdamp
    for attempt in range(attempts):
        tried = damp
        lower, info = torch.linalg.cholesky_ex(hessian + damp * mean_diag * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                if attempt:
                    warnings.warn(f"{method}: the Hessian was not positive definite with percdamp={percdamp:g}; "
                                  f"solved with percdamp={damp:g} instead (more calibration data helps)", stacklevel=3)
                return upper
        damp = max(10 * damp, 0.01)
    raise ValueError(f"{method}: the Hessian is not positive definite even with percdamp={tried:g}; "
                     "the calibration activations may hold NaN or inf")


def obs_column_sweep(w: torch.Tensor, u: torch.Tensor, blocksize: int, round_column: RoundColumnFn,
                     start_block: StartBlockFn | None = None) -> None:
    """Replace the columns of ``w`` [out, in] in place, left to right, compensating each change (OBS).

    ``u`` [in, in] is the upper Cholesky factor of H^-1 (``inverse_hessian_factor``). Columns are taken in
    blocks of ``blocksize``: within a block, column j becomes ``round_column(...)`` and its scaled error
    ``(w_j - rounded) / U_jj`` is subtracted from the columns after it, row by row; the errors of a whole
    block reach the later blocks in one matrix product (the "lazy batch" update of GPTQ and SparseGPT).
    """
    columns = w.shape[1]
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        block, u_block = w[:, start:end], u[start:end, start:end]
        if start_block is not None:
            start_block(start, end, block, u_block)
        errors = torch.zeros_like(block)
        for j in range(end - start):
            column = block[:, j]
            rounded = round_column(start + j, block, j)
            errors[:, j] = (column - rounded) / u_block[j, j]
            block[:, j + 1 :] -= errors[:, j : j + 1] * u_block[j : j + 1, j + 1 :]
            block[:, j] = rounded
        w[:, end:] -= errors @ u[start:end, end:]  # lazy update of every later column at once
