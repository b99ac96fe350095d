"""Read-only looks at a loaded model: its linear layers, weight magnitudes, a greedy continuation.

Plain torch, no Streamlit; ``ui.cache`` caches what is worth caching.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from core.layers import block_linear_layers, param_count, weight_matrix
from core.models import LoadedModel


def architecture(model: nn.Module) -> dict[str, object]:
    """The config fields a user recognises (None where this family names them differently)."""
    config = model.config
    names = getattr(config, "architectures", None) or [type(model).__name__]

    def first(*keys: str) -> object:
        return next((getattr(config, k) for k in keys if getattr(config, k, None) is not None), None)

    return {
        "architecture": names[0],
        "model type": config.model_type,
        "decoder blocks": first("num_hidden_layers", "n_layer"),
        "hidden size": first("hidden_size", "n_embd"),
        "MLP width": first("intermediate_size", "ffn_dim", "n_inner"),
        "attention heads": first("num_attention_heads", "n_head"),
        "KV heads": first("num_key_value_heads"),
        "vocabulary": first("vocab_size"),
        "tied embeddings": bool(getattr(config, "tie_word_embeddings", False)),
    }


def layer_rows(model: nn.Module) -> list[dict[str, object]]:
    """One row per linear layer inside the decoder blocks: name, type, shape [out, in], params."""
    rows = []
    for name, layer in block_linear_layers(model):
        out_features, in_features = weight_matrix(layer).shape
        bias = getattr(layer, "bias", None)
        rows.append({
            "name": name,
            "type": type(layer).__name__,
            "shape": f"{out_features} x {in_features}",
            "params": out_features * in_features + (bias.numel() if bias is not None else 0),
        })
    return rows


@torch.no_grad()
def magnitude_histogram(model: nn.Module, layer_name: str, bins: int = 60) -> tuple[list[float], list[int]]:
    """(bin left edges, counts) of |w| over one block linear layer's weight; bins span [0, max |w|]."""
    layers = dict(block_linear_layers(model))
    if layer_name not in layers:
        raise KeyError(f"no linear layer {layer_name!r} in the decoder blocks")
    values = weight_matrix(layers[layer_name]).detach().abs().float().flatten().cpu()
    top = float(values.max()) or 1.0
    counts = torch.histc(values, bins=bins, min=0.0, max=top)
    width = top / bins
    return [i * width for i in range(bins)], [int(c) for c in counts.tolist()]


@torch.inference_mode()
def greedy_continuation(loaded: LoadedModel, prompt: str, new_tokens: int) -> str:
    """The ``new_tokens`` most likely next tokens after ``prompt`` (greedy, with the KV cache), decoded."""
    tokenizer, model = loaded.tokenizer, loaded.model
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.numel() == 0:  # an empty prompt: start from the beginning-of-text token
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start]])
    room = max(1, loaded.context_length - new_tokens)
    ids = ids[:, -room:].to(loaded.device)  # keep the prompt's end when it would overflow the context
    out = model(input_ids=ids, use_cache=True)
    generated: list[int] = []
    for _ in range(new_tokens):
        token = out.logits[:, -1:].argmax(dim=-1)
        if token.item() == tokenizer.eos_token_id:
            break
        generated.append(int(token.item()))
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return tokenizer.decode(generated, skip_special_tokens=True)


def structured_units(model: nn.Module, target: str) -> tuple[int | None, str]:
    """(units per model that structured pruning of ``target`` chooses from, what they are called)."""
    info = architecture(model)
    if target == "mlp_channels":
        return info["MLP width"], "MLP channels in every block"
    if target == "heads":
        return info["KV heads"] or info["attention heads"], "KV head groups in every block"
    return info["decoder blocks"], "decoder blocks"


def embedding_params(model: nn.Module) -> int:
    """Parameters in the input embedding and the output head, a tied pair counted once."""
    modules = [model.get_input_embeddings(), model.get_output_embeddings()]
    unique = {id(p): p for m in modules if m is not None for p in m.parameters()}  # tied: one tensor
    return sum(p.numel() for p in unique.values())


def removal_summary(model: nn.Module, params_removed: int) -> str:
    """``params_removed`` as a share of all parameters and of those outside the embeddings."""
    total = param_count(model)
    outside = total - embedding_params(model)
    text = f"{params_removed / 1e6:,.2f} M parameters, {params_removed / total:.1%} of the model's {total / 1e6:,.1f} M"
    return text + (f" ({params_removed / outside:.1%} of those outside the embeddings)" if outside > 0 else "")


def slider_scale(top: float, steps: int = 500) -> tuple[float, float, str]:
    """(maximum rounded up, a round step, a printf format) for a float slider over [0, top]."""
    top = top if top > 0 else 1.0
    step = 10.0 ** math.floor(math.log10(top / steps))
    decimals = max(0, -math.floor(math.log10(step)))
    return round(math.ceil(top / step) * step, decimals), round(step, decimals), f"%.{decimals}f"
