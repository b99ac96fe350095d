"""SqueezeLab's own reader of llama.cpp's GGUF files, for the families transformers' GGUF loader cannot rebuild
faithfully (``Family.gguf.read_back == "squeezelab"``: GPT-2, GPT-NeoX, Falcon).

transformers rebuilds GPT-2 without its ``n_positions``, has no reader for ``gptneox``, and reads Falcon's fused
qkv in another order than llama.cpp's converter writes it. This reader undoes what the writer (and llama.cpp's
converter) does, from the facts in ``core.architectures``:

* the config from the file's metadata (``<arch>.embedding_length``, ``block_count``, ``head_count(_kv)``,
  ``context_length``, ``feed_forward_length``, the norm epsilon, the rotary base and dimensions, GPT-NeoX's
  parallel residual; Falcon's variant from its key/value heads and whether blocks have a second norm);
* every tensor dequantized with gguf's own dequantizer (F32, F16, Q8_0, Q4_0, Q4_1, ...), named back through
  the inverse of gguf's tensor-name map, its rows put back in the family's order (``gguf_row_order``), GPT-2's
  ``Conv1D`` weights transposed back to [in, out];
* the tokenizer from the ``tokenizer.ggml.*`` keys, with transformers' GGUF tokenizer converter.

Every parameter of the rebuilt model must come from the file and every tensor of the file must be used, or the
file is refused (``ModelFileError``) rather than half-loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.architecture_rows import gguf_row_order
from core.architectures import FAMILIES, NORM_LAYER, Family
from core.errors import ModelFileError
from core.layers import Conv1D
from core.models.skeleton import skeleton


def _family_for(arch: str) -> Family | None:
    """The family whose GGUF files SqueezeLab reads itself, by llama.cpp's architecture name."""
    return next((family for family in FAMILIES.values() if family.gguf is not None
                 and family.gguf.read_back == "squeezelab" and family.gguf.arch == arch), None)


def _reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:  # files.check_gguf names most damage first; this is the rest
        raise ModelFileError(f"{path} cannot be read as GGUF ({exc}); export or download it again") from exc


class _Metadata:
    """The file's key/value pairs, by key, and its tensors, by name."""

    def __init__(self, reader) -> None:
        self.fields = reader.fields
        self.arch = str(self.get("general.architecture"))
        self.tensors = {tensor.name: tensor for tensor in reader.tensors}

    def get(self, key: str, default: Any = None) -> Any:
        field = self.fields.get(key)
        return default if field is None else field.contents()

    def arch_value(self, key: str, default: Any = None) -> Any:
        value = self.get(f"{self.arch}.{key}", default)
        if value is None:
            raise ModelFileError(f"the GGUF file has no {self.arch}.{key}, which a {self.arch} model needs; export "
                                 "it again")
        return value


def reads_itself(path: str | Path) -> bool:
    """Whether ``path`` is a GGUF file of a family that SqueezeLab reads itself (rather than transformers)."""
    return _family_for(str(_Metadata(_reader(Path(path))).arch)) is not None


# ---- the config, from the metadata ----


def _neox_fields(meta: _Metadata) -> dict[str, Any]:
    return {"use_parallel_residual": bool(meta.get(f"{meta.arch}.use_parallel_residual", True)),
            "attention_bias": True}


def _falcon_fields(meta: _Metadata) -> dict[str, Any]:
    """Falcon's variant, as llama.cpp tells them apart: a second norm per block (Falcon-40B's ln_attn / ln_mlp),
    and key/value heads between one (multi-query, Falcon-7B) and all (one group per head)."""
    heads, kv = int(meta.arch_value("attention.head_count")), int(meta.arch_value("attention.head_count_kv", 1))
    two_norms = any(".attn_norm_2." in name for name in meta.tensors)
    new = two_norms or 1 < kv < heads
    return {"num_kv_heads": kv, "new_decoder_architecture": new, "multi_query": kv == 1 and not new,
            "num_ln_in_parallel_attn": (2 if two_norms else 1) if new else None, "parallel_attn": True,
            "bias": False, "alibi": False}


# What a family's config needs beyond the fields every family has (by Family.name)
_FAMILY_FIELDS: dict[str, Callable[[_Metadata], dict[str, Any]]] = {"gpt_neox": _neox_fields,
                                                                     "falcon": _falcon_fields}


def _token_ids(meta: _Metadata) -> dict[str, int | None]:
    keys = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "padding_token_id"}
    return {field: meta.get(f"tokenizer.ggml.{key}") for field, key in keys.items()}


def _config(meta: _Metadata, family: Family):
    from transformers import AutoConfig

    facts, arch_value = family.gguf, meta.arch_value
    hidden, heads = int(arch_value("embedding_length")), int(arch_value("attention.head_count"))
    embedding = meta.tensors.get("token_embd.weight")
    if embedding is None:
        raise ModelFileError(f"the GGUF file has no token_embd.weight, which a {meta.arch} model needs; export it "
                             "again")
    epsilon_key = "attention.layer_norm_epsilon" if family.norm == NORM_LAYER else "attention.layer_norm_rms_epsilon"
    fields = {"vocab_size": int(embedding.shape[-1]), "hidden_size": hidden,
              "num_hidden_layers": int(arch_value("block_count")), "num_attention_heads": heads,
              "max_position_embeddings": int(arch_value("context_length")),
              family.mlp.width_keys[0]: int(arch_value("feed_forward_length")),
              facts.eps_key: float(arch_value(epsilon_key)),
              "tie_word_embeddings": "output.weight" not in meta.tensors, **_token_ids(meta)}
    if facts.rope:
        rope = {"rope_type": "default", "rope_theta": float(meta.get(f"{meta.arch}.rope.freq_base", 10000.0))}
        if "rope_dimensions" in facts.keys:
            rope["partial_rotary_factor"] = int(arch_value("rope.dimension_count")) / (hidden // heads)
        fields["rope_parameters"] = rope
    fields.update(_FAMILY_FIELDS.get(family.name, lambda _: {})(meta))
    return AutoConfig.for_model(family.model_types[0], **fields)


def gguf_config(path: str | Path):
    """The transformers config of a GGUF file SqueezeLab reads itself (``reads_itself``)."""
    meta = _Metadata(_reader(Path(path)))
    return _config(meta, _known(meta, Path(path)))


def _known(meta: _Metadata, path: Path) -> Family:
    family = _family_for(meta.arch)
    if family is None:
        raise ModelFileError(f"{path} is a llama.cpp {meta.arch!r} file, which SqueezeLab's own GGUF reader does not "
                             "read; transformers' GGUF loader reads the others")
    return family


# ---- the weights ----


def _values(tensor) -> np.ndarray:
    """A file tensor as float32 in PyTorch's order ([rows, columns]; GGUF lists the dimensions the other way)."""
    import gguf

    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise ModelFileError(f"GGUF tensor {tensor.name} is of type {tensor.tensor_type.name}, which gguf cannot "
                             "dequantize here") from exc
    return np.array(values, dtype=np.float32).reshape([int(d) for d in reversed(tensor.shape)])


def _hf_value(name: str, values: np.ndarray, model: nn.Module, family: Family) -> torch.Tensor:
    """The file's values of the HF parameter ``name``, undoing the writer's conventions."""
    value = torch.from_numpy(values)
    order = gguf_row_order(name, model.config, family)
    if order is not None:
        value = value[torch.argsort(order)]
    if family.gguf.norm_shift and name.endswith("norm.weight"):
        value = value - family.gguf.norm_shift
    module = model.get_submodule(name.rsplit(".", 1)[0])
    if Conv1D and isinstance(module, Conv1D) and value.ndim == 2:
        value = value.t()  # GPT-2's Conv1D holds [in, out]
    return value.contiguous()


def _load_tensors_(model: nn.Module, meta: _Metadata, family: Family, path: Path) -> None:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[family.gguf.names], model.config.num_hidden_layers)
    state, used = {}, set()
    for name, parameter in model.named_parameters():  # a tied head is listed once, as the embedding
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target not in meta.tensors:
            continue
        value = _hf_value(name, _values(meta.tensors[target]), model, family)
        if value.shape != parameter.shape:
            raise ModelFileError(f"{path}: tensor {target} is {tuple(value.shape)} but the model its metadata "
                                 f"describes needs {tuple(parameter.shape)} for {name}; export it again")
        state[name] = value
        used.add(target)
    missing = [name for name, _ in model.named_parameters() if name not in state]
    unused = sorted(set(meta.tensors) - used)
    if missing or unused:
        raise ModelFileError(f"{path} does not hold the {family.name} model its metadata describes: missing "
                             f"{missing[:5]}, not understood {unused[:5]}; export it again")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(state[name])


def read_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """(model in eval mode on the CPU in ``dtype``, tokenizer) from a GGUF file of a family ``reads_itself``."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    meta = _Metadata(_reader(path))
    family = _known(meta, path)
    model = skeleton(_config(meta, family), torch.float32)
    _load_tensors_(model, meta, family, path)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.to(dtype).eval(), tokenizer
