"""Reload what SqueezeLab exported: its own stored form, plain or compressed-tensors folders, GGUF files (through
transformers, or ``core.models.gguf_read`` for the families it cannot rebuild).

SqueezeLab's own folder format (written by ``core.export.hf``) is a transformers folder whose
``config.json`` says ``quantization_config.quant_method: squeezelab``; its weights are in
``squeezelab.safetensors`` as packed codes, fp16 scales and sparse tensors (``core.models.sparse``).
``load_exported`` reloads any export the way a user would; ``core.models.loading.load`` comes here
for a folder in SqueezeLab's form.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import ModelFileError, SpecError
from core.models import files
from core.models.device import DTYPES, pick_device
from core.models.gguf_read import read_gguf, reads_itself
from core.models.skeleton import skeleton
from core.models.source import LoadedModel, ModelSource, ensure_pad_token
from core.models.sparse import MASK_SUFFIX, VALUES_SUFFIX, from_sparse
from core.quantize.kernel_choice import choose_kernels
from core.quantize.qembedding import tie_quantized_embedding_
from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import QuantScheme

QUANT_METHOD = "squeezelab"

FORMAT_VERSION = 1

# Not model.safetensors: transformers would load the folder with random weights in place of the packed
# ones (it skips an unknown quant_method with a warning); without that file it refuses instead.
SQUEEZELAB_WEIGHTS = "squeezelab.safetensors"

DENSE_WEIGHTS = "model.safetensors"


def is_squeezelab_folder(folder: Path) -> bool:
    """Whether ``folder/config.json`` names SqueezeLab's stored form."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable: not ours; the loader names what is wrong with it
        return False
    quantization = raw.get("quantization_config") if isinstance(raw, dict) else None
    return isinstance(quantization, dict) and quantization.get("quant_method") == QUANT_METHOD


def _read_state(folder: Path, sparse: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / SQUEEZELAB_WEIGHTS
    files.check_safetensors(path)
    try:
        state = load_file(str(path))
        for name, shape in sparse.items():
            state[name] = from_sparse(state.pop(name + MASK_SUFFIX), state.pop(name + VALUES_SUFFIX), tuple(shape))
    except (SafetensorError, KeyError, ValueError) as exc:  # a sparse tensor whose parts are missing or damaged
        raise ModelFileError(f"{path} does not hold what config.json describes ({exc}); export the model again") \
            from exc
    return state


def load_hf(folder: Path, dtype: torch.dtype | None = None, kernel: str | None = None) -> nn.Module:
    """Rebuild a SqueezeLab folder's model: QuantLinear modules, tied embedding, sparse tensors; on the CPU."""
    from transformers import AutoConfig

    folder = Path(folder)
    qconfig = files.read_config_json(folder)["quantization_config"]
    if qconfig.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(f"{folder} was written by a newer SqueezeLab (format {qconfig['format_version']}); "
                             "upgrade SqueezeLab to load it")
    config = AutoConfig.from_pretrained(folder)
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = skeleton(config, dtype)
    try:
        _swap_quantized(model, qconfig.get("modules", {}), dtype)
    except (AttributeError, KeyError, TypeError) as exc:  # a module the model lacks, or its entry lacks "bits"
        raise ModelFileError(f"{folder}/config.json: quantization_config.modules does not fit the model ({exc}); "
                             "export the model again") from exc
    if qconfig.get("tied_embedding"):
        tie_quantized_embedding_(model, model.get_output_embeddings())
    state = _read_state(folder, qconfig.get("sparse") or {})
    missing, unexpected = model.load_state_dict(state, strict=False)
    expected_state = model.state_dict()
    untied = [key for key in missing if not _shares_storage(expected_state, key)]
    if unexpected or untied:
        raise ModelFileError(f"{folder}/{SQUEEZELAB_WEIGHTS} does not match its config: missing {untied[:5]}, "
                             f"unexpected {unexpected[:5]}; export the model again")
    choose_kernels(model, kernel or qconfig.get("kernel", "auto"))
    return model.eval()


def _swap_quantized(model: nn.Module, modules: dict[str, dict[str, Any]], dtype: torch.dtype) -> None:
    """Put an empty QuantLinear where config.json says a layer was quantized (its codes are loaded next)."""
    for name, params in modules.items():
        old = model.get_submodule(name)
        weight = old.weight
        in_features, out_features = (weight.shape[0], weight.shape[1]) if not isinstance(old, nn.Linear) \
            else (old.in_features, old.out_features)  # GPT-2's Conv1D stores [in, out]
        scheme = QuantScheme(params["bits"], params.get("group_size"), params.get("symmetric", True))
        model.set_submodule(name, QuantLinear(in_features, out_features, scheme, getattr(old, "bias", None) is not None,
                                              dtype))


def _shares_storage(state: dict[str, torch.Tensor], key: str) -> bool:
    """Whether ``key`` is an alias (tied weight) of another entry, which the file stores once."""
    tensor = state[key]
    return any(other != key and t.data_ptr() == tensor.data_ptr() for other, t in state.items())


# ---- the call a user makes ----


def load_exported(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
                  kernel: str | None = None) -> LoadedModel:
    """Load any SqueezeLab export back: an hf folder (SqueezeLab's stored form or plain), a compressed-tensors
    folder, or a GGUF file (or a folder holding one). ``kernel`` picks the QuantLinear kernel (default: auto)."""
    path = Path(path).expanduser()
    target = pick_device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else DTYPES.get(dtype or "", None)
    gguf = path if path.suffix == ".gguf" else _only_gguf(path)
    if gguf is not None:
        model, tokenizer = reload_artifact("gguf", gguf, torch_dtype or torch.float32, kernel)
        source = ModelSource(str(gguf), "gguf", str(gguf.parent), gguf.name)
    else:
        if not (path / "config.json").is_file():
            raise SpecError(f"{path} is neither an exported folder (config.json) nor a .gguf file")
        model, tokenizer = reload_artifact("hf", path, torch_dtype, kernel)
        source = ModelSource(str(path), "folder", str(path))
    ensure_pad_token(tokenizer)
    model.to(target).eval()
    return LoadedModel(model, tokenizer, source, target, next(model.parameters()).dtype)


def _only_gguf(folder: Path) -> Path | None:
    """The .gguf file of an exported GGUF folder (one without config.json), else None."""
    if not folder.is_dir() or (folder / "config.json").exists():
        return None
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def reload_artifact(kind: str, path: Path, dtype: torch.dtype | None, kernel: str | None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a written artifact: ``path`` is a folder, or a .gguf file for kind gguf."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == "gguf":
        return load_gguf(path, dtype or torch.float32)
    files.check_folder(path)
    if is_squeezelab_folder(path):
        model = load_hf(path, dtype, kernel)
    else:  # plain or compressed-tensors: transformers itself (compressed-tensors decompresses on load)
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", use_safetensors=True,
                                                           output_loading_info=True, ignore_mismatched_sizes=True)
        files.check_loading_info(info, str(path))
        model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """What a user runs: transformers' GGUF loader (dequantizes to ``dtype``) for model and tokenizer, or SqueezeLab's
    own reader for the families transformers cannot rebuild faithfully (GPT-2, GPT-NeoX, Falcon:
    ``core.models.gguf_read``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    files.check_gguf(path)
    if reads_itself(path):
        return read_gguf(path, dtype)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
