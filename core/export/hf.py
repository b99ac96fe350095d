"""The Hugging Face folder format: config, safetensors, tokenizer, generation config.

A dense model is a plain transformers folder (``AutoModelForCausalLM.from_pretrained`` loads it).
A quantized or sparse one keeps SqueezeLab's stored form as it is, and says so in ``config.json``:

    "quantization_config": {"quant_method": "squeezelab", "format_version": 1,
        "modules": {"model.layers.0.mlp.up_proj": {"bits": 4, "group_size": 64, "symmetric": true}, ...},
        "tied_embedding": "model.embed_tokens",   # reads its rows from the quantized lm_head
        "sparse": {"model.layers.0.mlp.up_proj.weight": [1536, 576], ...}, "kernel": "auto"}

* a quantized layer: ``<name>.qweight`` (uint8 bit stream per row, little-endian; int8 ``code - 128``
  for 8 bits), ``<name>.scales`` fp16 [out, groups], ``<name>.zeros`` uint8 (asymmetric only),
  ``<name>.bias``; the weight is ``(code - zero) * scale`` (zero = 2^(bits-1) when symmetric).
* a sparse tensor: ``<name>.sparse_mask`` (np.packbits of ``w != 0``) and ``<name>.sparse_values``.

The weights of such a folder are in ``squeezelab.safetensors``, not ``model.safetensors``: transformers
skips a quant_method it does not know (with a warning) and would load random weights in place of the
packed ones; without ``model.safetensors`` it refuses instead. ``core.models.exported.load_hf``
(through ``load_exported``, or ``core.models.load`` with the folder as model reference) rebuilds the modules.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from core.errors import CancelledError
from core.layers import is_linear
from core.models.exported import DENSE_WEIGHTS, FORMAT_VERSION, QUANT_METHOD, SQUEEZELAB_WEIGHTS
from core.models.sparse import MASK_SUFFIX, VALUES_SUFFIX, to_sparse, worth_sparse
from core.quantize.qembedding import TiedQuantEmbedding
from core.quantize.qlinear import QuantLinear


@dataclass
class WriteReport:
    """What a writer stored: bytes the scheme promises for the weights, and notes for the user."""

    promised_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    lossy: bool = False  # True when the file does not hold exactly the in-memory weights
    details: dict = field(default_factory=dict)


def plain_config(model: nn.Module, dtype: torch.dtype):
    """A copy of the model's config without any loader's quantization marker, saying ``dtype``."""
    config = copy.deepcopy(model.config)
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.dtype = dtype
    return config


def quantized_modules(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}


def tied_embedding_name(model: nn.Module) -> str | None:
    """Name of a TiedQuantEmbedding in the model (it stores nothing of its own), or None."""
    return next((name for name, m in model.named_modules() if isinstance(m, TiedQuantEmbedding)), None)


def _unique_state(model: nn.Module, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict with float tensors in ``dtype`` and shared tensors (tied weights) once; the aliases."""
    state, seen, aliases = {}, {}, []
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.shape, tensor.dtype) if tensor.numel() else None
        if key is not None and key in seen:
            aliases.append(name)
            continue
        if key is not None:
            seen[key] = name
        is_float = tensor.is_floating_point() and not name.endswith(".scales")  # scales stay fp16 as stored
        state[name] = (tensor.to(dtype) if is_float else tensor).detach().cpu().contiguous()
    return state, aliases


def _sparsify(model: nn.Module, state: dict[str, torch.Tensor], mode: bool | None) -> dict[str, list[int]]:
    """Replace pruned linear weights by bitmask + values where that is smaller (``mode`` None) or always."""
    if mode is False:
        return {}
    linear_weights = {f"{name}.weight" for name, m in model.named_modules() if is_linear(m)}
    sparse = {}
    for name in [n for n in state if n in linear_weights]:
        tensor = state[name]
        if not (mode or worth_sparse(tensor)):
            continue
        packed = to_sparse(tensor)
        del state[name]
        state[name + MASK_SUFFIX], state[name + VALUES_SUFFIX] = packed.mask, packed.values
        sparse[name] = list(packed.shape)
    return sparse


def quantization_config(model: nn.Module, sparse: dict[str, list[int]], kernel: str = "auto") -> dict | None:
    """The ``quantization_config`` entry describing SqueezeLab's stored form (None for a plain dense model)."""
    modules = quantized_modules(model)
    if not modules and not sparse:
        return None
    return {
        "quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION,
        "modules": {name: {"bits": m.scheme.bits, "group_size": m.scheme.group_size, "symmetric": m.scheme.symmetric}
                    for name, m in modules.items()},
        "tied_embedding": tied_embedding_name(model), "sparse": sparse, "kernel": kernel,
        "packing": "codes as a little-endian bit stream per row; 8-bit: int8 = code - 128; "
                   "weight = (code - zero) * scale, zero = 2^(bits-1) when symmetric",
    }


def write_hf(model: nn.Module, tokenizer, folder: Path, dtype: torch.dtype, sparse: bool | None = None,
             cancel: Callable[[], bool] | None = None, config_dtype: torch.dtype | None = None) -> WriteReport:
    """Write ``model`` and ``tokenizer`` into the (existing, empty) ``folder`` as a transformers folder.

    Float tensors are stored in ``dtype``; the config names ``config_dtype`` (default ``dtype``), the dtype the
    reloaded model computes in: a quantized fp32 model stores its norms and embeddings in 16 bits and is
    reloaded in fp32, as it ran."""
    from safetensors.torch import save_file

    state, aliases = _unique_state(model, dtype)
    sparse_shapes = _sparsify(model, state, sparse)
    if cancel is not None and cancel():
        raise CancelledError("export cancelled before the weights were written")
    qconfig = quantization_config(model, sparse_shapes)
    weights = SQUEEZELAB_WEIGHTS if qconfig is not None else DENSE_WEIGHTS
    save_file(state, str(folder / weights), metadata={"format": "pt"})
    config = plain_config(model, config_dtype or dtype)
    config.save_pretrained(folder)
    if qconfig is not None:
        path = folder / "config.json"
        raw = json.loads(path.read_text())
        raw["quantization_config"] = qconfig
        path.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    report = WriteReport(promised_bytes=sum(t.numel() * t.element_size() for t in state.values()))
    if sparse_shapes:
        report.notes.append(f"{len(sparse_shapes)} pruned matrices stored sparse (bitmask + non-zero values)")
    report.details = {"tied_aliases": aliases, "sparse_tensors": len(sparse_shapes)}
    return report
