"""The hand-written one-token step of a pre-norm rotary decoder (Llama, Mistral, Qwen2/3), over a static cache.

At batch 1 on a CPU, one decode step of a small model in transformers' generic forward spends about
as much time in Python and small tensor ops (masks, reshapes, module calls) as in reading the
weights. This step runs the model's own weights and linear layers (whatever their kernel) with the
same math, but calls each layer's matmul directly, rotates queries and keys with one small matmul,
and runs layers that read the same input (q/k/v, gate/up) as one stacked matmul where their kernel
allows it exactly (plain float weights, fbgemm int8 with a scale per row). The stacked weights are a
copy held while the step lives. Keys and values go into the tensors of a transformers
``StaticCache`` (the prefill, transformers' own forward, filled them), so both share one cache.

The position is a tensor and attention runs over the whole cache with a mask, so the step has the
same shapes at every position: ``torch.compile`` can compile it once. Its logits equal the model's
forward (tests check that per family); ``unsupported_reason`` says when a model does not fit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from core.architectures import HandLayout, family_of

Fn = Callable[[torch.Tensor], torch.Tensor]


def _path(root: nn.Module, dotted: str) -> nn.Module | None:
    for name in dotted.split("."):
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


def hand_layout(model: nn.Module) -> HandLayout | None:
    """Where the hand-written step finds the model's parts (``core.architectures``), or None."""
    family = family_of(model)
    return family.decode_layout if family is not None else None


def unsupported_reason(model: nn.Module, layout: HandLayout, max_len: int | None = None) -> str | None:
    """Why the hand step cannot run ``model`` exactly with ``layout`` for ``max_len`` positions (None: it can).

    A sliding window wider than every position (Mistral's 4096 for a short generation) changes nothing."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if window is not None and (max_len is None or max_len > window):
        return f"sliding-window attention ({window} positions){'' if max_len is None else f' < {max_len}'}"
    inner = _path(model, layout.inner)
    parts = (layout.embed, layout.layers, layout.final_norm, layout.rotary)
    if inner is None or any(getattr(inner, p, None) is None for p in parts) or getattr(model, "lm_head", None) is None:
        return f"no {layout.inner}.{{{', '.join(parts)}}} / lm_head"
    first = None
    for layer in getattr(inner, layout.layers):
        attn, mlp = getattr(layer, layout.attention, None), getattr(layer, layout.mlp, None)
        if attn is None or not all(hasattr(attn, p) for p in (*layout.projections, "scaling", "head_dim")):
            return "a layer without q/k/v/o projections"
        first = first if first is not None else attn
        if attn.scaling != first.scaling:  # folded into one query rotation
            return "layers with different attention scalings"
        if mlp is None or not all(hasattr(mlp, p) for p in layout.mlp_parts):
            return "an MLP other than down(act(gate(x)) * up(x))"
        if not all(hasattr(layer, n) for n in layout.norms):
            return "a layer without its two pre-norms"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """R [positions, d, d] with ``x @ R[p] == x * cos[p] + rotate_half(x) * sin[p]`` for rows x [.., d]."""
    eye = torch.eye(cos.shape[-1], dtype=cos.dtype, device=cos.device)
    return eye * cos.unsqueeze(-2) + _rotate_half(eye) * sin.unsqueeze(-2)  # rotate_half(I) = H: x @ H


def _matmul(module: nn.Module) -> Fn:
    """The layer's matmul without nn.Module's call machinery."""
    if hasattr(module, "row_matmul"):  # QuantLinear: straight to its kernel
        return module.row_matmul()
    if type(module) is nn.Linear:
        weight, bias = module.weight, module.bias
        return lambda x: F.linear(x, weight, bias)
    return module


def stacked_matmul(modules: list[nn.Module], row_factors: list[float]) -> Fn | None:
    """One matmul for layers that read the same input, each layer's output rows times its factor
    (None when their kernels cannot be stacked exactly): entering one kernel instead of three is
    what counts at batch 1, where a decode step is mostly per-call overhead."""
    if all(type(m) is nn.Linear for m in modules):
        weight = torch.cat([m.weight.detach() * f for m, f in zip(modules, row_factors, strict=True)])
        bias = None
        if any(m.bias is not None for m in modules):
            bias = torch.cat([m.bias.detach() * f if m.bias is not None else weight.new_zeros(m.out_features)
                              for m, f in zip(modules, row_factors, strict=True)])
        return lambda x: F.linear(x, weight, bias)
    # QuantLinear offers its own stacking (looked up on the class: core.quantize imports this package's users)
    stack = getattr(type(modules[0]), "stacked_matmul", None)
    return stack(modules, row_factors) if stack is not None else None


def _norm(module: nn.Module) -> Fn:
    """The standard RMSNorm with its weight bound (transformers' formula, fp32 inside), else the module."""
    weight, eps = getattr(module, "weight", None), getattr(module, "variance_epsilon", None)
    if not type(module).__name__.endswith("RMSNorm") or weight is None or eps is None:
        return module

    def rms_norm(x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    return rms_norm


class _Layer:
    """One decoder layer's callables, bound once; its cache tensors are bound by ``HandStep.bind``."""

    def __init__(self, layer: nn.Module, layout: HandLayout, head_dim: int) -> None:
        attn, mlp = getattr(layer, layout.attention), getattr(layer, layout.mlp)
        q, k, v, o = (getattr(attn, n) for n in layout.projections)
        gate, up, down, act = (getattr(mlp, n) for n in layout.mlp_parts)
        self.o, self.down = _matmul(o), _matmul(down)
        self.act = F.silu if type(act).__name__ in ("SiLU", "SiLUActivation") else act
        self.attn_norm, self.mlp_norm = (_norm(getattr(layer, n)) for n in layout.norms)
        self.q_norm, self.k_norm = (getattr(attn, n, None) for n in layout.head_norms)
        self.heads, self.kv_heads = q.out_features // head_dim, k.out_features // head_dim
        # q/k/v as one matmul; the attention scaling goes into the query rows, unless a per-head
        # norm (Qwen3) follows the projection and would undo it
        fold = self.q_norm is None
        self.qkv = stacked_matmul([q, k, v], [attn.scaling if fold else 1.0, 1.0, 1.0])
        self.separate = None if self.qkv is not None else (_matmul(q), _matmul(k), _matmul(v))
        self.query_scale = 1.0 if self.qkv is not None and fold else attn.scaling  # still to apply to queries
        self.widths = [q.out_features, k.out_features, v.out_features]
        self.gate_up = stacked_matmul([gate, up], [1.0, 1.0])
        self.gate, self.up = (None, None) if self.gate_up is not None else (_matmul(gate), _matmul(up))
        self.keys = self.values = None  # [kv_heads, max_len, head_dim], bound to the cache


class HandStep:
    """``step(token [1, 1], position [1]) -> logits [1, vocab]`` for one new token of a pre-norm rotary decoder."""

    def __init__(self, model: nn.Module, layout: HandLayout, max_len: int) -> None:
        reason = unsupported_reason(model, layout, max_len)
        if reason:
            raise ValueError(f"the hand-written decode step cannot run this model: {reason}")
        inner = _path(model, layout.inner)
        self.embed = getattr(inner, layout.embed)
        weight = next(model.parameters())
        layers = list(getattr(inner, layout.layers))
        self.head_dim = getattr(layers[0], layout.attention).head_dim
        positions = torch.arange(max_len, device=weight.device)
        probe = torch.empty(0, device=weight.device, dtype=self.embed(positions[:1]).dtype)
        cos, sin = getattr(inner, layout.rotary)(probe, positions.unsqueeze(0))
        self.rotations = rotation_matrices(cos[0], sin[0])  # [max_len, d, d]
        # queries not already scaled by their projection get the scaling in their rotation (one op less)
        self.query_rotations = self.rotations * getattr(layers[0], layout.attention).scaling
        # additive attention mask per position: row p lets the query see cache slots 0..p
        visible = positions.unsqueeze(1) >= positions.unsqueeze(0)
        self.masks = torch.zeros(max_len, max_len, dtype=probe.dtype, device=weight.device)
        self.masks.masked_fill_(~visible, float("-inf"))
        self.layers = [_Layer(layer, layout, self.head_dim) for layer in layers]
        self.final_norm, self.lm_head = _norm(getattr(inner, layout.final_norm)), _matmul(model.lm_head)

    def bind(self, cache) -> None:  # noqa: ANN001 - a transformers StaticCache, filled by the prefill
        """Read and write keys / values in ``cache``'s tensors ([1, kv_heads, max_len, d] per layer)."""
        for layer, cached in zip(self.layers, cache.layers, strict=True):
            layer.keys, layer.values = cached.keys[0], cached.values[0]

    def _qkv(self, layer: _Layer, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Queries [heads, d] (scaled, rotated) of one token x [1, hidden]; its key and value go to the cache."""
        d = self.head_dim
        rotation = self.rotations.index_select(0, position)[0]  # [d, d]
        if layer.qkv is not None and layer.q_norm is None and layer.k_norm is None:
            y = layer.qkv(x)[0]
            qk_width = layer.widths[0] + layer.widths[1]
            qk = y[:qk_width].view(-1, d) @ rotation  # queries pre-scaled; one matmul rotates q and k
            q, k, v = qk[:layer.heads], qk[layer.heads:], y[qk_width:].view(layer.kv_heads, d)
        else:
            if layer.qkv is not None:
                q, k, v = layer.qkv(x)[0].split(layer.widths)
            else:
                q, k, v = (f(x)[0] for f in layer.separate)
            q, k, v = q.view(layer.heads, d), k.view(layer.kv_heads, d), v.view(layer.kv_heads, d)
            if layer.q_norm is not None:
                q, k = layer.q_norm(q), layer.k_norm(k)
            k = k @ rotation
            scaled = rotation if layer.query_scale == 1.0 else self.query_rotations.index_select(0, position)[0]
            q = q @ scaled
        layer.keys.index_copy_(1, position, k.unsqueeze(1))
        layer.values.index_copy_(1, position, v.unsqueeze(1))
        return q

    def _attention(self, layer: _Layer, x: torch.Tensor, position: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self._qkv(layer, x, position)
        # one query per head against the whole cache, later slots masked: a grouped matmul, the same
        # shapes at every position (the fused CPU attention kernels are tuned for long queries)
        grouped = q.view(layer.kv_heads, layer.heads // layer.kv_heads, self.head_dim)
        scores = torch.baddbmm(mask, grouped, layer.keys.transpose(1, 2))  # q already scaled
        out = torch.bmm(scores.softmax(dim=-1), layer.values).view(1, -1)
        return layer.o(out)

    @staticmethod
    def _mlp(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        if layer.gate_up is not None:
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = layer.gate(x), layer.up(x)
        return layer.down(layer.act(gate) * up)

    def __call__(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        h = self.embed(token[0])  # [1, hidden]
        mask = self.masks.index_select(0, position)  # [1, max_len], broadcast over heads
        for layer in self.layers:
            h = h + self._attention(layer, layer.attn_norm(h), position, mask)
            h = h + self._mlp(layer, layer.mlp_norm(h))
        return self.lm_head(self.final_norm(h))
