"""The optimal-brain-surgeon column sweep that GPTQ and SparseGPT share, on tiny matrices."""

from __future__ import annotations

import torch

from core.calibration import inverse_hessian_factor, obs_column_sweep


def test_a_sweep_that_keeps_every_column_changes_nothing():
    w = torch.randn(3, 5, dtype=torch.float64)
    x = torch.randn(40, 5, dtype=torch.float64)
    u = inverse_hessian_factor(x.t() @ x, 0.0, "test")
    swept = w.clone()
    obs_column_sweep(swept, u, blocksize=2, round_column=lambda index, block, j: block[:, j].clone())
    assert torch.equal(swept, w)


def test_with_identity_hessian_nothing_is_compensated():
    w = torch.arange(1.0, 7.0, dtype=torch.float64).reshape(2, 3)
    swept = w.clone()
    obs_column_sweep(swept, torch.eye(3, dtype=torch.float64), blocksize=2,
                     round_column=lambda index, block, j: torch.zeros_like(block[:, j]) if index == 0 else block[:, j])
    assert torch.equal(swept[:, 0], torch.zeros(2, dtype=torch.float64)) and torch.equal(swept[:, 1:], w[:, 1:])


def test_dropping_a_column_moves_its_error_onto_the_correlated_column_exactly():
    """Two perfectly correlated inputs (x1 = x0): dropping w0 is fully repaired by w1 += w0 (OBS)."""
    x0 = torch.randn(64, 1, dtype=torch.float64)
    x = torch.cat([x0, x0 + 1e-6 * torch.randn(64, 1, dtype=torch.float64)], dim=1)
    w = torch.tensor([[0.7, -0.2], [1.5, 0.4]], dtype=torch.float64)
    u = inverse_hessian_factor(x.t() @ x, 0.0, "test")
    swept = w.clone()
    for blocksize in (1, 2):  # within a block or through the lazy update between blocks: the same result
        swept = w.clone()
        obs_column_sweep(swept, u, blocksize, lambda index, block, j: block[:, j] * (index != 0))
        assert torch.allclose(swept[:, 1], w.sum(dim=1), atol=1e-4)
        assert torch.allclose(x @ swept.t(), x @ w.t(), atol=1e-4)
