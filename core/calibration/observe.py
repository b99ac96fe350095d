"""Whole-model forward passes over calibration ids, with hooks that reduce what modules see to statistics.

Where the block walk (``core.calibration.walk``) solves layer by layer, some methods only need one
summary of every chosen module's input over the calibration text: structured pruning ranks MLP
channels and heads by input norms and blocks by their residual update; SmoothQuant reads each
input channel's peak |x|. Each function here runs the model once over all calibration rows (eval
mode, no gradients), hooks removed afterwards whatever happens; a cancel leaves the model unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from core.checks import require
from core.progress import CancelFn, ProgressFn, check_cancel, report


def calibration_rows(calibration: torch.Tensor) -> torch.Tensor:
    """Token ids [seqlen] or [samples, seqlen] as [samples, seqlen]; refused if they are not ids."""
    ok = isinstance(calibration, torch.Tensor) and not calibration.is_floating_point() and calibration.numel() > 0
    require(ok and calibration.dim() in (1, 2),
            "calibration must be token ids: a non-empty integer tensor shaped [seqlen] or [samples, seqlen]")
    return calibration.reshape(-1, calibration.shape[-1])


@torch.no_grad()
def forward_rows(model: nn.Module, ids: torch.Tensor, handles: list, what: str,
                 on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> None:
    """Forward every row of ``ids`` [samples, seqlen] while ``handles`` (hooks) collect; then remove them."""
    device, was_training = next(model.parameters()).device, model.training
    batch = 8 if device.type == "cuda" else 1
    model.eval()
    try:
        for start in range(0, ids.shape[0], batch):
            check_cancel(cancel, f"{what} cancelled during calibration ({start} of {ids.shape[0]} samples seen); "
                                 "the model is unchanged")
            model(input_ids=ids[start : start + batch].to(device), use_cache=False)
            report(on_progress, "calibrate", (start + batch) / ids.shape[0])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def _reduce_inputs(model: nn.Module, modules: Sequence[nn.Module], ids: torch.Tensor, what: str,
                   reduce: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                   on_progress: ProgressFn | None, cancel: CancelFn | None) -> list[torch.Tensor]:
    """``reduce(x [tokens, features], so_far)`` folded over every input each module receives."""
    found: dict[int, torch.Tensor] = {}

    def hook_for(i: int) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            found[i] = reduce(x.reshape(-1, x.shape[-1]), found.get(i))
        return hook

    forward_rows(model, ids, [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)], what,
                 on_progress, cancel)
    return [found[i] for i in range(len(modules))]


def input_feature_norms(model: nn.Module, modules: Sequence[nn.Module], ids: torch.Tensor, what: str,
                        on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> list[torch.Tensor]:
    """Per-feature L2 norm [features] of each module's input over all calibration tokens (float32)."""
    def add_squares(x: torch.Tensor, so_far: torch.Tensor | None) -> torch.Tensor:
        squares = x.float().pow(2).sum(dim=0).double().cpu()
        return squares if so_far is None else so_far + squares

    sums = _reduce_inputs(model, modules, ids, what, add_squares, on_progress, cancel)
    return [total.sqrt().float() for total in sums]


def input_feature_peaks(model: nn.Module, modules: Sequence[nn.Module], ids: torch.Tensor, what: str,
                        on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> list[torch.Tensor]:
    """Per-feature max |x| [features] of each module's input over all calibration tokens (float32)."""
    def peak(x: torch.Tensor, so_far: torch.Tensor | None) -> torch.Tensor:
        value = x.abs().amax(dim=0).float()
        return value if so_far is None else torch.maximum(so_far, value)

    return _reduce_inputs(model, modules, ids, what, peak, on_progress, cancel)


def block_update_squares(model: nn.Module, blocks: Sequence[nn.Module], ids: torch.Tensor, what: str,
                         on_progress: ProgressFn | None = None,
                         cancel: CancelFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of ||out - in||^2, sum of ||in||^2) [blocks] of each block's hidden states over the calibration tokens."""
    delta, inputs = torch.zeros(len(blocks), dtype=torch.float64), torch.zeros(len(blocks), dtype=torch.float64)

    def hook_for(i: int) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = (args[0] if args else kwargs["hidden_states"]).detach().float()
            h_out = (output[0] if isinstance(output, tuple) else output).detach().float()
            delta[i] += float((h_out - h_in).pow(2).sum())
            inputs[i] += float(h_in.pow(2).sum())
        return hook

    forward_rows(model, ids, [b.register_forward_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)],
                 what, on_progress, cancel)
    return delta, inputs
