"""SmoothQuant: move activation outliers into the weights before int8 activation quantization.

A few input channels of a transformer's linear layers carry activations 10-100x larger than the
rest, in every token. With one int8 range per token those channels set the range and the others
keep only a few levels. SmoothQuant (Xiao et al., 2023) divides channel j of the activations by
``s_j = max|X_j|^α / max|W_:,j|^(1-α)`` and multiplies column j of the weights by the same
``s_j``: ``(X / s)(s W)^T == X W^T`` exactly in real numbers, while the activations become flat
enough for 8 bits and the weights (quantized per output row) absorb the difference.

The division has to happen somewhere that costs nothing at run time; in a Llama-style block:
* q/k/v and gate/up read the output of an RMSNorm: its weight is divided by s;
* down_proj reads ``act(gate) * up``: up_proj's output rows are divided by s;
* o_proj reads the attention output, a mix of v rows: v_proj's output rows are divided by s
  (one s per key/value head channel, shared by the query heads of its group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.calibration.observe import input_feature_peaks
from core.progress import CancelFn


@dataclass(frozen=True)
class SmoothReport:
    alpha: float
    layers: int  # linear layers whose inputs were smoothed
    max_ratio_before: float  # worst max|X_j| / median_j max|X_j| over smoothed inputs
    max_ratio_after: float

    def as_dict(self) -> dict:
        return {"alpha": self.alpha, "layers": self.layers, "max_ratio_before": self.max_ratio_before,
                "max_ratio_after": self.max_ratio_after}


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be smoothed here (None: it can)."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        return "no model.layers (smoothing folds scales into Llama-style blocks)"
    for layer in layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        needed = [(attn, "q_proj"), (attn, "k_proj"), (attn, "v_proj"), (attn, "o_proj"), (mlp, "gate_proj"),
                  (mlp, "up_proj"), (mlp, "down_proj"), (layer, "input_layernorm"), (layer, "post_attention_layernorm")]
        if any(owner is None or not isinstance(getattr(owner, name, None), nn.Module) for owner, name in needed):
            return "a block without q/k/v/o, gate/up/down projections and two norms"
        if any(type(getattr(owner, name)) is not nn.Linear for owner, name in needed[:7]):
            return "projections that are not plain nn.Linear (smooth before quantizing)"
        if not type(layer.input_layernorm).__name__.endswith("RMSNorm"):
            return "norms other than RMSNorm"
    return None


def _input_ranges(model: nn.Module, calibration: torch.Tensor,
                  cancel: CancelFn | None) -> dict[nn.Module, torch.Tensor]:
    """max |x_j| over all calibration tokens of the input of every q_proj, gate_proj, o_proj, down_proj."""
    modules = [module for layer in model.model.layers
               for module in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.down_proj)]
    peaks = input_feature_peaks(model, modules, calibration, "smoothing", cancel=cancel)
    return dict(zip(modules, peaks, strict=True))


def _scales(x_range: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_range = torch.stack([w.detach().abs().amax(dim=0).float() for w in weights]).amax(dim=0)
    s = x_range.clamp(min=1e-5).pow(alpha) / w_range.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(min=1e-5)


def _spread(x_range: torch.Tensor) -> float:
    return float(x_range.max() / x_range.median().clamp(min=1e-8))


@torch.no_grad()
def smooth_(model: nn.Module, calibration: torch.Tensor, alpha: float = 0.5,
            cancel: CancelFn | None = None) -> SmoothReport:
    """Fold SmoothQuant scales into ``model`` in place; the float model computes the same function."""
    reason = unsupported_reason(model)
    if reason:
        raise ValueError(f"cannot smooth this model: {reason}")
    if not 0 < alpha < 1:
        raise ValueError(f"smoothing strength alpha must be in (0, 1), e.g. 0.5; got {alpha}")
    ranges = _input_ranges(model, calibration, cancel)
    before, after, count = 1.0, 1.0, 0
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for norm, readers in ((layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj]),
                              (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])):
            x_range = ranges[readers[0]]
            s = _scales(x_range, [r.weight for r in readers], alpha)
            norm.weight.div_(s.to(norm.weight.dtype))
            for reader in readers:
                reader.weight.mul_(s.to(reader.weight.dtype))
            before, after, count = max(before, _spread(x_range)), max(after, _spread(x_range / s)), count + len(readers)
        x_range = ranges[mlp.down_proj]
        s = _scales(x_range, [mlp.down_proj.weight], alpha)
        _divide_rows(mlp.up_proj, s)
        mlp.down_proj.weight.mul_(s.to(mlp.down_proj.weight.dtype))
        before, after, count = max(before, _spread(x_range)), max(after, _spread(x_range / s)), count + 1
        s_o = _attention_output_scales(attn, ranges[attn.o_proj], alpha)
        if s_o is not None:
            before, after = max(before, _spread(ranges[attn.o_proj])), max(after, _spread(ranges[attn.o_proj] / s_o))
            count += 1
    return SmoothReport(alpha, count, before, after)


def _divide_rows(linear: nn.Linear, s: torch.Tensor) -> None:
    linear.weight.div_(s.to(linear.weight.dtype).unsqueeze(1))
    if linear.bias is not None:
        linear.bias.div_(s.to(linear.bias.dtype))


def _attention_output_scales(attn: nn.Module, x_range: torch.Tensor, alpha: float) -> torch.Tensor | None:
    """Scale o_proj's inputs through v_proj's rows; the scales of o_proj's input channels (None: skipped)."""
    head_dim = getattr(attn, "head_dim", None)
    o, v = attn.o_proj, attn.v_proj
    if head_dim is None or o.in_features % head_dim or v.out_features % head_dim:
        return None
    heads, kv_heads = o.in_features // head_dim, v.out_features // head_dim
    if heads % kv_heads:
        return None
    group = heads // kv_heads
    s = _scales(x_range, [o.weight], alpha).view(kv_heads, group, head_dim)
    s_v = s.amax(dim=1)  # [kv_heads, head_dim]: one scale per v channel, shared by its query heads
    _divide_rows(v, s_v.reshape(-1))
    s_o = s_v.unsqueeze(1).expand(kv_heads, group, head_dim).reshape(-1)
    o.weight.mul_(s_o.to(o.weight.dtype))
    return s_o
