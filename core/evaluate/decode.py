"""A lean batch-1 generation loop for Llama-style decoders, used to time prefill and decode.

At batch 1 on a CPU, one decode step of a 135M model in transformers' generic forward spends about
as much time in Python and small tensor ops (cache objects, masks, reshapes, module calls) as in
reading the weights, so a faster matmul kernel hardly shows in tokens/s. This loop runs the
model's own weights and linear layers (whatever their kernel) with the same math, but keeps keys
and values in one preallocated tensor per layer, rotates queries and keys with one small matmul,
calls each layer's matmul directly, and runs layers that read the same input (q/k/v, gate/up) as
one stacked matmul where their kernel allows it exactly (plain fp weights, fbgemm int8 with a
scale per row). The stacked weights are a copy held while the loop lives. Its logits equal the
model's forward (tests check that), so what it times is the model; every model runs the same loop,
so speed-ups compare like with like.

Models it cannot run exactly (other block layouts, sliding windows, Gemma-style norms, ...) are
timed with transformers' forward and its KV cache; ``loop_name`` says which loop ran.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

STATIC_LOOP = "static KV cache, direct layer calls (core.evaluate.decode)"
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


def _stacked_matmul(modules: list[nn.Module], row_factors: list[float]) -> Fn | None:
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
    # QuantLinear offers its own stacking (looked up on the class: core.quantize.qlinear imports this module's users)
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
    """One decoder layer's callables and cache, bound once."""

    def __init__(self, layer: nn.Module, head_dim: int, max_len: int, weight: torch.Tensor) -> None:
        attn, mlp = layer.self_attn, layer.mlp
        self.attn, self.mlp = attn, mlp
        self.q, self.k, self.v, self.o = (_matmul(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        self.gate, self.up, self.down = (_matmul(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj"))
        self.act = F.silu if type(mlp.act_fn).__name__ in ("SiLU", "SiLUActivation") else mlp.act_fn
        self.attn_norm, self.mlp_norm = _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)
        self.q_norm, self.k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        self.heads = attn.q_proj.out_features // head_dim
        self.kv_heads = attn.k_proj.out_features // head_dim
        # q/k/v as one matmul; the attention scaling goes into the query rows, unless a per-head
        # norm (Qwen3) follows the projection and would undo it
        fold = self.q_norm is None
        self.qkv = _stacked_matmul([attn.q_proj, attn.k_proj, attn.v_proj], [attn.scaling if fold else 1.0, 1.0, 1.0])
        self.query_scale = 1.0 if self.qkv is not None and fold else attn.scaling  # still to apply to queries
        self.qkv_widths = [attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features]
        self.gate_up = _stacked_matmul([mlp.gate_proj, mlp.up_proj], [1.0, 1.0])
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
        # queries not already scaled by their projection get the scaling in their rotation (one op less)
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

    def _one_token_qkv(self, layer: _Layer, x: torch.Tensor, start: int) -> torch.Tensor:
        """Queries [heads, d] (scaled, rotated) of one token x [1, hidden]; its key and value go to the cache.

        With stacked q/k/v and no per-head norms, queries and keys are rotated by one matmul."""
        if layer.qkv is not None and layer.q_norm is None and layer.k_norm is None:
            y = layer.qkv(x)[0]
            qk_width = layer.qkv_widths[0] + layer.qkv_widths[1]
            qk = y[:qk_width].view(-1, self.head_dim) @ self.rotations[start]  # queries pre-scaled
            layer.keys[:, start] = qk[layer.heads:]
            layer.values[:, start] = y[qk_width:].view(layer.kv_heads, self.head_dim)
            return qk[:layer.heads]
        q, k, v = self._projections(layer, x)
        layer.keys[:, start:start + 1] = k @ self.rotations[start]
        layer.values[:, start:start + 1] = v
        rotation = self.rotations[start] if layer.query_scale == 1.0 else self.query_rotations[start]
        return (q @ rotation).view(layer.heads, self.head_dim)

    def _projections(self, layer: _Layer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [heads, tokens, d] of x [tokens, hidden], before rotation."""
        if layer.qkv is not None:
            q, k, v = layer.qkv(x).split(layer.qkv_widths, dim=1)
        else:
            q, k, v = layer.q(x), layer.k(x), layer.v(x)
        return (self._heads(q, layer.heads, layer.q_norm), self._heads(k, layer.kv_heads, layer.k_norm),
                self._heads(v, layer.kv_heads, None))

    def _attention(self, layer: _Layer, x: torch.Tensor, start: int) -> torch.Tensor:
        """Self-attention of the new tokens x [tokens, hidden] (positions start..) over the cache."""
        tokens, end = x.shape[0], start + x.shape[0]
        group = layer.heads // layer.kv_heads
        if tokens == 1:
            q = self._one_token_qkv(layer, x, start)
            keys, values = layer.keys[:, :end], layer.values[:, :end]
            # One query per head: a grouped matmul on the cache slice; the fused CPU attention
            # kernels are tuned for long queries and slow on a strided cache.
            grouped = q.view(layer.kv_heads, group, self.head_dim)
            scores = torch.bmm(grouped, keys.transpose(1, 2))  # q already scaled
            out = torch.bmm(scores.softmax(dim=-1), values).view(1, -1)
            return layer.o(out)
        q, k, v = self._projections(layer, x)
        cos, sin = self.cos[start:end], self.sin[start:end]
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        layer.keys[:, start:end], layer.values[:, start:end] = k, v
        keys, values = layer.keys[:, :end], layer.values[:, :end]
        out = F.scaled_dot_product_attention(q, keys.repeat_interleave(group, dim=0),
                                             values.repeat_interleave(group, dim=0),
                                             is_causal=True, scale=layer.query_scale)
        return layer.o(out.transpose(0, 1).reshape(tokens, -1))

    @staticmethod
    def _mlp(layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        if layer.gate_up is not None:
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
        else:
            gate, up = layer.gate(x), layer.up(x)
        return layer.down(layer.act(gate) * up)

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
            h += self._mlp(layer, layer.mlp_norm(h))
        self.length = start + tokens
        return self.lm_head(self.final_norm(h[-1:]))
