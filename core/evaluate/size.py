"""Size as stored: parameters, non-zeros, and the bytes the weights really take."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SizeMetrics:
    """Parameters and the bytes the weights take as stored in memory."""

    params: int
    nonzero_params: int
    size_bytes: int
    bits_per_weight: float


def _weight_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters, plus the buffers of packed modules (their integer weights); tied ones once.

    Other buffers (rotary frequencies, position ids, causal masks) are recomputable, not weights.
    """
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    for prefix, module in model.named_modules():
        if hasattr(module, "logical_params"):
            tensors.update({f"{prefix}.{name}": b for name, b in module.named_buffers(recurse=False)})
    return {name: t for name, t in tensors.items() if t.device.type != "meta"}


def measure_size(model: torch.nn.Module) -> SizeMetrics:
    """Count parameters, non-zeros and stored bytes (weights as they sit in memory, tied ones once).

    Packed quantized modules keep integer weights in buffers and report how many weights they
    represent through ``logical_params`` / ``logical_nonzero``; their bytes count as stored.
    A pruned model stored densely therefore shows its zeros but no saving in bytes.
    """
    tensors = _weight_tensors(model)
    floating = [t for t in tensors.values() if isinstance(t, torch.nn.Parameter)]
    packed = [m for m in model.modules() if hasattr(m, "logical_params")]
    params = sum(t.numel() for t in floating) + sum(int(m.logical_params) for m in packed)
    nonzero = sum(int(torch.count_nonzero(t)) for t in floating) + sum(int(m.logical_nonzero) for m in packed)
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    stored += sum(int(getattr(m, "opaque_bytes", 0)) for m in packed)  # weights a kernel keeps outside tensors
    return SizeMetrics(
        params=params,
        nonzero_params=nonzero,
        size_bytes=int(stored),
        bits_per_weight=8.0 * stored / params if params else float("nan"),
    )
