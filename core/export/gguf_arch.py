"""What a GGUF file of each family holds besides its tensors' codes: llama.cpp's architecture name, tensor
names, metadata keys and the per-tensor conventions its converter (``convert_hf_to_gguf.py``) applies.

The facts come from ``core.architectures`` (``Family.gguf``, or ``gguf_refusal`` saying why a family is not
written; ``Gguf.requires`` and ``Gguf.refusal`` for a variant llama.cpp's architecture would run as another
model: another MLP activation, Gemma's query scale or soft-capping, ...). Per family:

* Llama and Mistral (architecture ``llama``): q/k rows permuted for llama.cpp's rotary layout;
* Qwen2 / Qwen3: no permutation; Qwen2's q/k/v biases, Qwen3's q/k norms (``attn_q_norm``), the head size;
* Gemma-2 / Gemma-3: every norm stored as ``1 + w`` (llama.cpp multiplies by the stored weight; Gemma's
  RMSNorm computes ``x * (1 + w)``), the head size, the sliding window, Gemma-2's logit soft-capping;
  the embedding is stored unscaled (llama.cpp, like transformers, multiplies it by sqrt(hidden));
* Phi-3: the fused ``qkv_proj`` and ``gate_up_proj`` as llama.cpp's ``attn_qkv`` and ``ffn_up``;
* GPT-2 (``gpt2``): ``Conv1D`` weights ([in, out]) transposed to [out, in], the learned position embeddings
  (``position_embd``), LayerNorm with biases, no rotary metadata;
* GPT-NeoX (``gptneox``): the per-head interleaved ``query_key_value`` rows stored as [q | k | v], the rotary
  part of each head (``rope.dimension_count`` from ``rotary_pct``), the parallel-residual flag;
* Falcon (``falcon``): the per-group ``query_key_value`` rows stored as [q | k | v] (the converter's "jploski"
  layout), Falcon-40B's two norms as ``attn_norm`` (MLP) and ``attn_norm_2`` (attention); ALiBi, sequential
  and biased variants are refused (llama.cpp's falcon runs none of them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from core.architecture_rows import attention_heads, gguf_row_order, mlp_width, rotary_dims
from core.architectures import (
    GROUPED,
    NORM_LAYER,
    Family,
    Gguf,
    family_of,
)
from core.errors import SpecError


def gguf_facts(model: nn.Module) -> tuple[Family, Gguf]:
    """The model's family and how llama.cpp stores it; SpecError naming why not and the formats that can."""
    config = model.config
    family = family_of(model)
    if family is None or family.gguf is None:
        why = family.gguf_refusal if family is not None and family.gguf_refusal else "llama.cpp's format is not " \
            "written for this family"
        writable = ", ".join(sorted(name for name, f in _families().items() if f.gguf is not None))
        raise SpecError(f"GGUF export cannot write a {config.model_type!r} model: {why}. GGUF is written for "
                        f"{writable}; formats that can write this model: hf, compressed-tensors")
    _check_variant(config, family.gguf)
    for rope in _rope_parameters(config):
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            raise SpecError(f"GGUF export writes default rotary embeddings only; this model uses "
                            f"{rope.get('rope_type', rope.get('type'))!r} scaling. Export as format hf or "
                            "compressed-tensors")
    if getattr(config, "mlp_bias", False):
        raise SpecError("GGUF export of models with MLP biases is not supported; export as format hf")
    layer_types = getattr(config, "layer_types", None)
    if layer_types and list(layer_types) != _default_layer_types(config):
        raise SpecError("GGUF keeps no per-block attention types, and this model's sliding / full attention blocks "
                        f"({', '.join(layer_types)}) are not its family's default pattern, which readers rebuild; "
                        "export as format hf or compressed-tensors")
    return family, family.gguf


def _check_variant(config: Any, facts: Gguf) -> None:
    """SpecError when llama.cpp's architecture would run another model than this config describes."""
    unmet = next((need for need in facts.requires if getattr(config, need.key, None) not in need.allowed), None)
    why = f"llama.cpp's {facts.arch} {unmet.does}, and this model has {unmet.key}: " \
          f"{getattr(config, unmet.key, None)!r}" if unmet else facts.refusal(config)
    if why:
        raise SpecError(f"GGUF export cannot write this {config.model_type!r} model: {why}. Export as format hf or "
                        "compressed-tensors")


def _default_layer_types(config: Any) -> list[str] | None:
    """The layer types a config of this class gets for its block count when none are given (what a GGUF reader
    rebuilds)."""
    fields = config.to_dict()
    fields.pop("layer_types", None)
    return list(getattr(type(config).from_dict(fields), "layer_types", None) or [])


def _families() -> dict[str, Family]:
    from core.architectures import FAMILIES

    return FAMILIES


def _rope_parameters(config: Any) -> list[dict]:
    """Every rotary setting of the config: one dict, or one per layer type (Gemma-3's sliding / full)."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    nested = [value for value in rope.values() if isinstance(value, dict)]
    return nested or [rope]


def rope_base(config: Any, layer_type: str = "full_attention") -> float:
    """The RoPE base (of the full-attention layers when they differ from the sliding ones)."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope = rope.get(layer_type, rope) if isinstance(rope.get(layer_type), dict) else rope
    return float(rope.get("rope_theta", getattr(config, "rope_theta", None) or 10000.0))


def tensor_name_map(model: nn.Module, facts: Gguf):
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH[facts.names], model.config.num_hidden_layers)


def transform(name: str, array: np.ndarray, model: nn.Module, family: Family, facts: Gguf) -> np.ndarray:
    """The tensor as llama.cpp's converter stores it: rows reordered (Llama's q/k, a fused per-head / per-group
    qkv), ``1 + w`` norms (Gemma). ``array`` is [out, ...] (GPT-2's Conv1D weights already transposed)."""
    order = gguf_row_order(name, model.config, family)
    if order is not None:
        array = array[order.numpy()]
    if facts.norm_shift and name.endswith("norm.weight"):
        array = array + np.asarray(facts.norm_shift, dtype=array.dtype)
    return array


def write_config(writer, model: nn.Module, family: Family, facts: Gguf) -> None:
    """The architecture's metadata keys, as llama.cpp reads them (and a GGUF reader maps back)."""
    config = model.config
    heads, kv_heads, head_dim = attention_heads(config, family)
    writer.add_name(str(getattr(config, "_name_or_path", "") or "squeezelab-export"))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(mlp_width(config, family))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_vocab_size(config.vocab_size)
    epsilon = float(getattr(config, facts.eps_key))
    if family.norm == NORM_LAYER:
        writer.add_layer_norm_eps(epsilon)
    else:
        writer.add_layer_norm_rms_eps(epsilon)
    if facts.rope:
        writer.add_rope_freq_base(rope_base(config))
    if "rope_dimensions" in facts.keys:
        writer.add_rope_dimension_count(rotary_dims(config, head_dim))
    if "parallel_residual" in facts.keys:
        writer.add_parallel_residual(bool(config.use_parallel_residual))
    if facts.stack_qkv and family.attention.layout == GROUPED:
        writer.add_tensor_data_layout("jploski")  # what llama.cpp's converter names Falcon's [q | k | v] order
    _write_attention_extras(writer, config, facts, head_dim)


def _write_attention_extras(writer, config: Any, facts: Gguf, head_dim: int) -> None:
    if "key_length" in facts.keys:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if "sliding_window" in facts.keys and getattr(config, "sliding_window", None):
        writer.add_sliding_window(int(config.sliding_window))
    if "rope_swa" in facts.keys:
        writer.add_rope_freq_base_swa(rope_base(config, "sliding_attention"))
    if "softcapping" in facts.keys:
        for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                         ("final_logit_softcapping", writer.add_final_logit_softcapping)):
            if getattr(config, key, None) is not None:
                add(float(getattr(config, key)))
