"""Exact scale folding, shared by SmoothQuant and AWQ, for every family ``core.architectures`` describes.

Both methods multiply input channel j of some linear layers by ``s_j`` and divide what produces that
input by the same ``s_j``: ``(x / s) (W diag(s))^T == x W^T`` in real numbers, so the float model
computes the same function and the scales cost nothing at run time. Where the division goes (the
family's ``folds`` say which module produces which linears' input):

* linears reading a norm's output: the norm's weight is divided by s, by its formula: ``w / s`` (RMSNorm),
  ``(1 + w) / s - 1`` (Gemma's ``x * (1 + w)``), ``w / s`` and ``b / s`` (LayerNorm);
* a linear reading another linear's output rows (down_proj after up_proj, Phi-3's down_proj after the up
  half of gate_up_proj, OPT's fc2 after fc1 through ReLU): those rows (and biases) are divided by s;
* the attention's output projection reads a mix of value rows: the value rows (of v_proj, or of a fused
  qkv in the family's layout) are divided by s, one s per key/value channel, shared by the query heads
  of its group (``FoldGroup.heads``).

Nothing here hooks a model: modules in, weights changed in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.architecture_rows import attention_heads, value_rows
from core.architectures import (
    NORM_LAYER,
    NORM_RMS_PLUS_ONE,
    Family,
    family_of,
    family_of_block,
    known_families,
    part,
)
from core.layers import decoder_blocks, is_linear, weight_matrix


@dataclass(frozen=True)
class FoldGroup:
    """Linear ``readers`` sharing one input, and the module ``producer`` that makes it.

    ``kind``: "norm", "rows" (a linear layer's output rows) or "heads" (value rows under the attention's
    output projection, with ``heads`` = (kv_heads, query heads per kv head, head_dim)). ``rows``: the
    producer's output rows that carry the input (None: all of them); ``norm``: the norm's formula."""

    kind: str
    producer: nn.Module
    readers: tuple[nn.Module, ...]
    heads: tuple[int, int, int] | None = None
    rows: torch.Tensor | None = None
    norm: str = "rms"

    @property
    def columns(self) -> int:
        return weight_matrix(self.readers[0]).shape[1]


def _plain_linear(module: nn.Module | None) -> bool:
    return module is not None and is_linear(module) and not hasattr(module, "scheme")


def unsupported_reason(model: nn.Module) -> str | None:
    """Why scales cannot be folded into ``model`` exactly (None: they can)."""
    family = family_of(model)
    if family is None:
        return (f"model_type {getattr(model.config, 'model_type', None)!r} has no fold table (families with one: "
                f"{known_families()})")
    reason = family.fold_refusal(model.config)
    if reason:
        return reason
    for block in decoder_blocks(model)[1]:
        for fold in family.folds_for(model.config):
            producer, readers = part(block, fold.producer), [part(block, name) for name in fold.readers]
            if producer is None or None in readers:
                return f"a block without {fold.producer} and {', '.join(fold.readers)}"
            if not all(_plain_linear(reader) for reader in readers) or (fold.kind != "norm"
                                                                        and not _plain_linear(producer)):
                return "projections that are not plain linear layers (fold scales before quantizing)"
            if fold.kind == "norm" and getattr(producer, "weight", None) is None:
                return f"{fold.producer} has no weight to fold a scale into"
    return None


def block_groups(layer: nn.Module, family: Family | None = None) -> list[FoldGroup]:
    """The fold groups of one decoder block, in forward order (a heads group only where the heads allow it)."""
    family = family or family_of_block(layer)
    if family is None:
        raise ValueError(f"{type(layer).__name__}: no fold table for this block's family")
    config = next(m.config for m in layer.modules() if hasattr(m, "config"))
    groups = []
    for fold in family.folds_for(config):
        producer, readers = part(layer, fold.producer), tuple(part(layer, name) for name in fold.readers)
        if fold.kind == "norm":
            groups.append(FoldGroup("norm", producer, readers, norm=family.norm))
        elif fold.kind == "rows":
            rows = None
            if fold.rows == "second_half":
                width = weight_matrix(producer).shape[0] // 2
                rows = torch.arange(width, 2 * width)
            groups.append(FoldGroup("rows", producer, readers, rows=rows))
        else:
            heads = _head_layout(family, config, readers[0])
            if heads is not None:
                groups.append(FoldGroup("heads", producer, readers, heads, value_rows(family, config)))
    return groups


def _head_layout(family: Family, config, output: nn.Module) -> tuple[int, int, int] | None:
    heads, kv_heads, head_dim = attention_heads(config, family)
    if weight_matrix(output).shape[1] != heads * head_dim or heads % kv_heads:
        return None
    return kv_heads, heads // kv_heads, head_dim


def share_over_heads(s: torch.Tensor, heads: tuple[int, int, int], reduce: str = "max") -> torch.Tensor:
    """Scales [heads * head_dim] of o_proj's inputs made equal across the query heads of each kv head
    (the largest, or the geometric mean with ``reduce="geomean"``), so v_proj's rows can carry them."""
    kv_heads, group, head_dim = heads
    grouped = s.view(kv_heads, group, head_dim)
    shared = grouped.amax(dim=1) if reduce == "max" else grouped.log().mean(dim=1).exp()
    return shared.unsqueeze(1).expand(kv_heads, group, head_dim).reshape(-1)


@torch.no_grad()
def fold_(group: FoldGroup, s: torch.Tensor) -> None:
    """Divide the producer's output channels by ``s`` [columns] and multiply the readers' columns by it.

    For a "heads" group ``s`` must already be shared across query heads (``share_over_heads``).
    """
    if group.kind == "norm":
        _divide_norm_(group.producer, s, group.norm)
    elif group.kind == "rows":
        divide_rows_(group.producer, s, group.rows)
    else:
        kv_heads, query_per_kv, head_dim = group.heads
        divide_rows_(group.producer, s.view(kv_heads, query_per_kv, head_dim)[:, 0, :].reshape(-1), group.rows)
    for reader in group.readers:
        weight = weight_matrix(reader)
        weight.mul_(s.to(weight.dtype))


def _divide_norm_(norm: nn.Module, s: torch.Tensor, formula: str) -> None:
    weight = norm.weight
    s = s.to(weight.device, torch.promote_types(weight.dtype, torch.float32))
    if formula == NORM_RMS_PLUS_ONE:  # Gemma computes x * (1 + w): the factor, not w, is divided
        weight.copy_(((1.0 + weight.to(s.dtype)) / s - 1.0).to(weight.dtype))
        return
    weight.div_(s.to(weight.dtype))
    if formula == NORM_LAYER and getattr(norm, "bias", None) is not None:
        norm.bias.div_(s.to(norm.bias.dtype))


@torch.no_grad()
def divide_rows_(linear: nn.Module, s: torch.Tensor, rows: torch.Tensor | None = None) -> None:
    """Output rows (and bias) of ``linear`` divided by ``s``: all rows [out], or the listed ``rows`` [len(s)]."""
    weight = weight_matrix(linear)  # [out, in], a view for GPT-2's Conv1D
    scale = s.to(weight.device, weight.dtype)
    bias = getattr(linear, "bias", None)
    if rows is None:
        weight.div_(scale.unsqueeze(1))
        if bias is not None:
            bias.div_(scale.to(bias.dtype))
        return
    rows = rows.to(weight.device)
    weight[rows] = weight[rows] / scale.unsqueeze(1)
    if bias is not None:
        bias[rows] = bias[rows] / scale.to(bias.dtype)
