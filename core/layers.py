"""Find the parts of a causal LM generically: decoder blocks and the linear layers inside them.

No architecture's attribute path is hard-coded: the decoder blocks are the longest ``nn.ModuleList``
of identical block types, and linear layers are ``nn.Linear`` or GPT-2's ``Conv1D`` (which stores
its weight transposed, as [in, out]). ``weight_matrix`` always returns a view shaped [out, in].
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

import torch
from torch import nn

try:  # GPT-2 style models use Conv1D (a linear layer with a transposed weight)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    Conv1D = ()  # type: ignore[assignment,misc]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)


def is_linear(module: nn.Module) -> bool:
    """True for ``nn.Linear`` and GPT-2's ``Conv1D``."""
    return isinstance(module, LINEAR_TYPES)


def param_count(module: nn.Module) -> int:
    """Parameters of ``module`` and its children (a tied tensor counted once, as ``parameters()`` does)."""
    return sum(p.numel() for p in module.parameters())


def model_device(model: nn.Module) -> torch.device:
    """Where the model's (first) parameters live; inputs for it are moved there."""
    return next(model.parameters()).device


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as [out_features, in_features] (a view: writing to it writes the layer)."""
    return module.weight.t() if Conv1D and isinstance(module, Conv1D) else module.weight


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(qualified name, module list) of the model's repeated decoder blocks."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            same_type = len({type(child) for child in module}) == 1
            has_linear = any(is_linear(m) for m in module[0].modules())
            if same_type and has_linear and (best is None or len(module) > len(best[1])):
                best = (name, module)
    if best is None:
        raise ValueError(f"{type(model).__name__} has no list of decoder blocks with linear layers")
    return best


def linear_layers(
    module: nn.Module,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
    prefix: str = "",
) -> Iterator[tuple[str, nn.Module]]:
    """Linear layers under ``module`` whose qualified names match ``include`` and not ``exclude``.

    Patterns are shell-style (``*mlp*``, ``*.q_proj``); names are prefixed with ``prefix``.
    """
    for name, child in module.named_modules():
        full = f"{prefix}.{name}" if prefix and name else (prefix or name)
        if not is_linear(child):
            continue
        if any(fnmatch.fnmatch(full, p) for p in include) and not any(fnmatch.fnmatch(full, p) for p in exclude):
            yield full, child


def block_linear_layers(
    model: nn.Module, include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ()
) -> list[tuple[str, nn.Module]]:
    """Every selected linear layer inside the decoder blocks (embeddings and lm_head are outside)."""
    blocks_name, blocks = decoder_blocks(model)
    return list(linear_layers(blocks, include, exclude, prefix=blocks_name))
