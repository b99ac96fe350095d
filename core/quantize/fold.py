"""Exact scale folding in a Llama-style block, shared by SmoothQuant and AWQ.

Both methods multiply input channel j of some linear layers by ``s_j`` and divide what produces that
input by the same ``s_j``: ``(x / s) (W diag(s))^T == x W^T`` in real numbers, so the float model
computes the same function and the scales cost nothing at run time. Where the division goes:

* q/k/v and gate/up read the output of an RMSNorm: its weight is divided by s;
* down_proj reads ``act(gate) * up``: up_proj's output rows (and bias) are divided by s;
* o_proj reads the attention output, a mix of v rows: v_proj's output rows are divided by s, one s per
  key/value channel, shared by the query heads of its group (``FoldGroup.heads``).

Nothing here hooks a model: modules in, weights changed in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FoldGroup:
    """Linear ``readers`` sharing one input, and the module ``producer`` that makes it.

    ``kind``: "norm" (an RMSNorm), "rows" (a linear layer's output rows) or "heads" (v_proj's rows
    under o_proj, with ``heads`` = (kv_heads, query heads per kv head, head_dim)).
    """

    kind: str
    producer: nn.Module
    readers: tuple[nn.Linear, ...]
    heads: tuple[int, int, int] | None = None

    @property
    def columns(self) -> int:
        return self.readers[0].in_features


def unsupported_reason(model: nn.Module) -> str | None:
    """Why scales cannot be folded into ``model`` (None: they can)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return "no model.layers (scales fold into Llama-style blocks)"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        needed = [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (mlp, "gate_proj"),
                  (mlp, "up_proj"), (mlp, "down_proj"), (layer, "input_layernorm"), (layer, "post_attention_layernorm")]
        if any(owner is None or not isinstance(getattr(owner, name, None), nn.Module) for owner, name in needed):
            return "a block without q/k/v/o, gate/up/down projections and two norms"
        if any(type(getattr(owner, name)) is not nn.Linear for owner, name in needed[:7]):
            return "projections that are not plain nn.Linear (fold scales before quantizing)"
        if not type(layer.input_layernorm).__name__.endswith("RMSNorm"):
            return "norms other than RMSNorm"
    return None


def block_groups(layer: nn.Module) -> list[FoldGroup]:
    """The fold groups of one Llama-style block, in forward order (o_proj only where heads allow it)."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = [FoldGroup("norm", layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj))]
    heads = _head_layout(attn)
    if heads is not None:
        groups.append(FoldGroup("heads", attn.v_proj, (attn.o_proj,), heads))
    groups += [FoldGroup("norm", layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj)),
               FoldGroup("rows", mlp.up_proj, (mlp.down_proj,))]
    return groups


def _head_layout(attn: nn.Module) -> tuple[int, int, int] | None:
    head_dim = getattr(attn, "head_dim", None)
    o, v = attn.o_proj, attn.v_proj
    if head_dim is None or o.in_features % head_dim or v.out_features % head_dim:
        return None
    heads, kv_heads = o.in_features // head_dim, v.out_features // head_dim
    return None if heads % kv_heads else (kv_heads, heads // kv_heads, head_dim)


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
        group.producer.weight.div_(s.to(group.producer.weight.dtype))
    elif group.kind == "rows":
        divide_rows_(group.producer, s)
    else:
        kv_heads, query_per_kv, head_dim = group.heads
        divide_rows_(group.producer, s.view(kv_heads, query_per_kv, head_dim)[:, 0, :].reshape(-1))
    for reader in group.readers:
        reader.weight.mul_(s.to(reader.weight.dtype))


def divide_rows_(linear: nn.Linear, s: torch.Tensor) -> None:
    """Output rows (and bias) of ``linear`` divided by ``s`` [out]."""
    linear.weight.div_(s.to(linear.weight.dtype).unsqueeze(1))
    if linear.bias is not None:
        linear.bias.div_(s.to(linear.bias.dtype))
