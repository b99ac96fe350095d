"""A lean batch-1 generation loop for Llama-style decoders, used to time prefill and decode.

At batch 1 on a CPU, one decode step of a 135M model in transformers' generic forward spends about
as much time in Python and small tensor ops (cache objects, masks, reshapes, module calls) as in
reading the weights, so a faster matmul kernel hardly shows in tokens/s. This loop runs the
model's own weights and linear layers (whatever their kernel) with the same math, but keeps keys
and values in one preallocated tensor per layer, rotates queries and keys with one small matmul,
and calls each layer's matmul directly. Its logits equal the model's forward (tests check that),
so what it times is the model; every model runs the same loop, so speed-ups compare like with like.

Models it cannot run exactly (other block layouts, sliding windows, Gemma-style norms, ...) are
timed with transformers' forward and its KV cache; ``loop_name`` says which loop ran.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

STATIC_LOOP = "static KV cache, direct layer calls (core.decode)"
TRANSFORMERS_LOOP = "transformers forward + DynamicCache"

# Families whose decoder layer is: x + attn(norm(x)) with rotary q/k, then x + mlp(norm(x)).
_LLAMA_STYLE = {"llama", "mistral", "qwen2", "qwen3"}
_MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")

Fn = Callable[[torch.Tensor], torch.Tensor]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the static loop cannot run ``model`` exactly (None: it can)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in _LLAMA_STYLE:
        return f"model type {model_type!r} is not one of {sorted(_LLAMA_STYLE)}"
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "no model.layers / model.rotary_emb"
    for layer in inner.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling")):
            return "a layer without q/k/v/o projections"
        if attn.scaling != inner.layers[0].self_attn.scaling:  # folded into one query rotation
            return "layers with different attention scalings"
        if not all(hasattr(layer.mlp, p) for p in _MLP_PARTS):
            return "an MLP other than down(act(gate(x)) * up(x))"
    return None


def loop_name(model: nn.Module) -> str:
    return TRANSFORMERS_LOOP if unsupported_reason(model) else STATIC_LOOP


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotation_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
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
    """One decoder layer's callables and cache, bound once."""

    def __init__(self, layer: nn.Module, head_dim: int, max_len: int, weight: torch.Tensor) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.attn, self.mlp = attn, mlp
        self.q, self.k, self.v, self.o = (_matmul(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.gate, self.up, self.down = (_matmul(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj"))
        self.act = F.silu if type(mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") else mlp.act_fn
        self.attn_norm, self.mlp_norm = _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.scaling = attn.scaling
        self.heads = attn.q_proj.out_features // head_dim
        self.kv_heads = attn.k_proj.out_features // head_dim
        shape = (self.kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.values = torch.zeros(shape, device=weight.device, dtype=weight.dtype)


class StaticDecoder:
    """Prefill + greedy decode of one sequence with a preallocated KV cache of ``max_len`` positions."""

    def __init__(self, model: nn.Module, max_len: int) -> None:
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"the static decode loop cannot run this model: {reason}")
        self.model, self.inner, self.max_len = model, model.model, max_len
        weight = self.inner.embed_tokens.weight
        self.head_dim = self.inner.layers[0].self_attn.head_dim
        positions = torch.arange(max_len, device=weight.device).unsqueeze(0)
        cos, sin = self.inner.rotary_emb(torch.empty(0, device=weight.device, dtype=weight.dtype), positions)
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]
        self.rotations = _rotation_matrices(self.cos, self.sin)  # [max_len, head_dim, head_dim]
        # queries also carry the attention scaling, folded into their rotation (one op less per layer)
        self.query_rotations = self.rotations * self.inner.layers[0].self_attn.scaling
        self.layers = [_Layer(layer, self.head_dim, max_len, weight) for layer in self.inner.layers]
        self.final_norm, self.lm_head = _norm(self.inner.norm), _matmul(model.lm_head)
        self.length = 0

    def reset(self) -> None:
        self.length = 0

    def _heads(self, x: torch.Tensor, heads: int, norm: nn.Module | None) -> torch.Tensor:
        """[tokens, heads * d] -> [heads, tokens, d], with Qwen3's per-head norm where there is one."""
        x = x.view(x.shape[0], heads, self.head_dim)
        if norm is not None:
            x = norm(x)
        return x.transpose(0, 1)

    def _attention(self, layer: _Layer, x: torch.Tensor, start: int) -> torch.Tensor:
        """Self-attention of the new tokens x [tokens, hidden] (positions start..) over the cache."""
        tokens, end = x.shape[0], start + x.shape[0]
        q = self._heads(layer.q(x), layer.heads, layer.q_norm)
        k = self._heads(layer.k(x), layer.kv_heads, layer.k_norm)
        if tokens == 1:
            q, k = q @ self.query_rotations[start], k @ self.rotations[start]
        else:
            cos, sin = self.cos[start:end], self.sin[start:end]
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        layer.keys[:, start:end] = k
        layer.values[:, start:end] = self._heads(layer.v(x), layer.kv_heads, None)
        keys, values = layer.keys[:, :end], layer.values[:, :end]
        group = layer.heads // layer.kv_heads
        if tokens == 1:
            # One query per head: a grouped matmul on the cache slice; the fused CPU attention
            # kernels are tuned for long queries and slow on a strided cache.
            grouped = q.reshape(layer.kv_heads, group, self.head_dim)
            scores = torch.bmm(grouped, keys.transpose(1, 2))  # q already scaled
            out = torch.bmm(scores.softmax(dim=-1), values).view(1, -1)
        else:
            out = F.scaled_dot_product_attention(q, keys.repeat_interleave(group, dim=0),
                                                 values.repeat_interleave(group, dim=0),
                                                 is_causal=True, scale=layer.scaling)
            out = out.transpose(0, 1).reshape(tokens, -1)
        return layer.o(out)

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed token ids [1, T] after what was fed before; the logits of the last position [1, vocab]."""
        start, tokens = self.length, token_ids.shape[1]
        if tokens > 1 and start != 0:
            raise ValueError("several tokens at once only as the first call (the prefill)")
        if start + tokens > self.max_len:
            raise ValueError(f"{start + tokens} positions exceed the cache of {self.max_len}")
        h = self.inner.embed_tokens(token_ids[0])  # [tokens, hidden]
        for layer in self.layers:
            h = h + self._attention(layer, layer.attn_norm(h), start)
            x = layer.mlp_norm(h)
            h += layer.down(layer.act(layer.gate(x)) * layer.up(x))
        self.length = start + tokens
        return self.lm_head(self.final_norm(h[-1:]))
