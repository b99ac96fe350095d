"""Geometry that follows from a family's facts (``core.architectures``) and a config: attention heads, the rows of
fused projections (which rows of a fused qkv are q, k and v), the MLP's width, rotary dimensions, and the row
order of llama.cpp's GGUF tensors. Index computations only; nothing here touches weights.
"""

from __future__ import annotations

from typing import Any

import torch

from core.architectures import GROUPED, INTERLEAVED, SEPARATE, STACKED, Family


def attention_heads(config: Any, family: Family) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a family's config."""
    heads = config.num_attention_heads
    if family.name == "falcon":
        kv = config.num_kv_heads if config.new_decoder_architecture else (1 if config.multi_query else heads)
    else:
        kv = getattr(config, "num_key_value_heads", None) or heads
    key = family.attention.head_dim_key
    head_dim = (getattr(config, key, None) if key else None) or config.hidden_size // heads
    return heads, kv, head_dim


def qkv_rows(layout: str, heads: int, kv: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row indices of the q, k and v parts of a fused qkv matrix, per key/value group:
    q [kv, heads // kv * head_dim], k and v [kv, head_dim], each group in order."""
    per_group = heads // kv
    span = torch.arange(head_dim)
    if layout == STACKED:  # [q | k | v]
        q = torch.arange(heads * head_dim).view(kv, per_group * head_dim)
        k = heads * head_dim + torch.arange(kv * head_dim).view(kv, head_dim)
        return q, k, k + kv * head_dim
    if layout == INTERLEAVED:  # per head [q, k, v]; one head per group
        base = (torch.arange(heads) * 3 * head_dim).unsqueeze(1)
        return base + span, base + head_dim + span, base + 2 * head_dim + span
    if layout == GROUPED:  # per group [q of its heads, k, v]
        base = (torch.arange(kv) * (per_group + 2) * head_dim).unsqueeze(1)
        q = base + torch.arange(per_group * head_dim)
        return q, base + per_group * head_dim + span, base + (per_group + 1) * head_dim + span
    raise ValueError(f"no fused rows in layout {layout!r}")


def value_rows(family: Family, config: Any) -> torch.Tensor | None:
    """Rows of the value projection (or of the fused qkv) that hold v, in key/value-channel order [kv * head_dim];
    None for separate projections (all rows of v_proj)."""
    if family.attention.layout == SEPARATE:
        return None
    return qkv_rows(family.attention.layout, *attention_heads(config, family))[2].reshape(-1)


def mlp_width(config: Any, family: Family) -> int:
    """The MLP's width: the first of the family's width keys that is set (GPT-2's n_inner: None means 4 x hidden)."""
    widths = (getattr(config, key, None) for key in family.mlp.width_keys)
    return int(next((width for width in widths if width), 4 * config.hidden_size))


def rotary_dims(config: Any, head_dim: int) -> int:
    """How many of a head's dimensions turn with the rotary embedding (GPT-NeoX's rotary_pct: a part of them)."""
    rope = getattr(config, "rope_parameters", None) or {}
    factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None)) if isinstance(
        rope, dict) else None
    return int(head_dim * (factor if factor is not None else 1.0))


# ---- the row orders of llama.cpp's GGUF files ----


def gguf_row_order(name: str, config: Any, family: Family) -> torch.Tensor | None:
    """The rows of the HF tensor ``name`` in the order llama.cpp's converter stores them (file row i is HF row
    order[i]), or None when they are stored as they are: Llama's q/k rows with each head's two rotary halves
    interleaved; a fused per-head (GPT-NeoX) or per-group (Falcon) qkv as [all q | all k | all v]."""
    facts = family.gguf
    if facts is None or not name.endswith((".weight", ".bias")):
        return None
    module = name.rsplit(".", 1)[0]
    heads, kv, head_dim = attention_heads(config, family)
    if facts.permute_qk and module.endswith(family.attention.qkv[:2]):
        count = heads if module.endswith(family.attention.qkv[0]) else kv
        return torch.arange(count * head_dim).view(count, 2, head_dim // 2).transpose(1, 2).reshape(-1)
    if facts.stack_qkv and family.attention.layout != SEPARATE and module.endswith(family.attention.qkv[0]):
        q, k, v = qkv_rows(family.attention.layout, heads, kv, head_dim)
        return torch.cat([q.reshape(-1), k.reshape(-1), v.reshape(-1)])
    return None
