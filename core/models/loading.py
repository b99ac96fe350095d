"""Load causal LMs by model reference: samples, local folders, GGUF files (converted once), the Hub.

Nothing here runs remote code or unpickles weights unless the caller opts in. A folder SqueezeLab
exported in its own stored form is rebuilt by ``core.models.exported``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from core.errors import (
    HubUnreachableError,
    ModelFileError,
    ModelNotFoundError,
    NotACausalLMError,
    UnsafeModelError,
)
from core.models import files
from core.models.device import check_memory, estimate_weight_bytes, pick_device, pick_dtype
from core.models.exported import is_squeezelab_folder, load_exported
from core.models.gguf_read import gguf_config, read_gguf, reads_itself
from core.models.source import DEFAULT_MODEL, LoadedModel, ModelSource, ensure_pad_token, resolve

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")

PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP probe of the Hub endpoint, so an offline machine fails in seconds, not minutes."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def read_config(source: ModelSource, trust_remote_code: bool = False, local_only: bool = False):
    """The model's config, after the safety and causal-LM checks."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if source.gguf_file:
        with _unusable_file(source, source.gguf_file):
            config = AutoConfig.from_pretrained(source.location, gguf_file=source.gguf_file)
    else:
        raw = _raw_config(source, local_only)
        model_type = raw.get("model_type")
        if model_type not in CONFIG_MAPPING_NAMES and "auto_map" in raw and not trust_remote_code:
            raise UnsafeModelError(
                f"{source.ref} needs its own Python code from the repository (model_type {model_type!r}, auto_map "
                "in config.json); loading would run that code. Pass trust_remote_code (CLI: --trust-remote-code) "
                "only if you trust its authors"
            )
        with _unusable_file(source, "config.json"):
            config = AutoConfig.from_pretrained(source.location, trust_remote_code=trust_remote_code,
                                                local_files_only=local_only)
    # Encoder families (BERT, RoBERTa, ...) also appear in the causal-LM mapping because they have an
    # optional decoder head; a checkpoint that was not trained as a decoder would get a random head.
    encoder_only = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    unknown_type = config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "auto_map", None)
    if encoder_only or unknown_type or getattr(config, "is_encoder_decoder", False):
        raise NotACausalLMError(
            f"{source.ref} is a {config.model_type!r} model, which is not a causal (decoder-only) language model; "
            "SqueezeLab compresses text generators such as Llama, Qwen, GPT-2, OPT or GPT-NeoX models"
        )
    return config


def _raw_config(source: ModelSource, local_only: bool) -> dict:
    if source.kind in ("sample", "folder", "gguf"):
        return files.read_config_json(Path(source.location))
    from huggingface_hub import hf_hub_download

    downloaded = hf_hub_download(source.location, "config.json", local_files_only=local_only)
    return files.read_config_json(Path(downloaded).parent)


@contextlib.contextmanager
def _unusable_file(source: ModelSource, name: str) -> Iterator[None]:
    """Turn transformers' refusal of a local file that parsed (a value of the wrong type, an unknown model type, a
    GGUF architecture it cannot read) into a ModelFileError naming the file; Hub errors pass unchanged."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        yield
    except (ValueError, TypeError, StrictDataclassError) as exc:
        if source.kind == "hub":
            raise
        detail = " ".join(str(exc).split())[:400]
        raise ModelFileError(f"transformers cannot use {Path(source.location) / name} of {source.ref}: {detail}; fix "
                             f"the value it names, or {files.REDO}") from exc


def check_weight_format(source: ModelSource, allow_pickle: bool) -> None:
    """Refuse pickle-only weights (torch.load can run code) unless the caller opts in."""
    if source.kind == "hub" or allow_pickle:
        return
    folder = Path(source.location)
    if any((folder / name).is_file() for name in SAFE_WEIGHTS):
        return
    if any((folder / name).is_file() for name in PICKLE_WEIGHTS):
        raise UnsafeModelError(
            f"{source.ref} has weights only in pickle format (pytorch_model.bin); unpickling can run code. "
            "Convert them to safetensors, or pass allow_pickle (CLI: --allow-pickle) if you trust the file"
        )
    raise ModelNotFoundError(f"folder {source.ref!r} has config.json but no weights (model.safetensors)")


def load(
    ref: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    check_free_memory: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer by model reference, in eval mode on the chosen device."""
    source = resolve(ref)
    target = pick_device(device)
    torch_dtype = pick_dtype(target, dtype)
    if source.kind in ("sample", "folder"):
        files.check_folder(Path(source.location))  # a damaged file is named before any library parses it
    if source.kind == "folder" and is_squeezelab_folder(Path(source.location)):
        return _load_squeezelab(source, target, torch_dtype)
    if source.kind == "gguf":
        source = ModelSource(source.ref, "gguf", str(gguf_as_folder(source, check_free_memory)))
    local_only = source.kind != "hub" or hub_local_only(source)
    config = read_config(source, trust_remote_code, local_only)
    check_weight_format(source, allow_pickle)
    if check_free_memory:
        check_memory(estimate_weight_bytes(config, torch_dtype), target, source.ref)
    model = _load_weights(source, torch_dtype, allow_pickle, trust_remote_code, local_only)
    tokenizer = load_tokenizer(source, trust_remote_code, local_only)
    model.to(target).eval()
    return LoadedModel(model, tokenizer, source, target, torch_dtype)


def _load_squeezelab(source: ModelSource, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A folder SqueezeLab exported in its own stored form (packed codes, sparse weights)."""
    loaded = load_exported(source.location, device=str(device), dtype=dtype)
    return LoadedModel(loaded.model, loaded.tokenizer, source, loaded.device, loaded.dtype)


def hub_local_only(source: ModelSource) -> bool:
    """Offline: use the local cache if it holds the model, else say the Hub is unreachable."""
    if hub_reachable():
        return False
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source.location, "config.json"), str):
        return True
    raise HubUnreachableError(
        f"cannot reach the Hugging Face Hub to fetch {source.ref!r}, and it is not in the local cache. "
        "Download it on a connected machine (or use a local folder / .gguf file path instead), "
        "or try a bundled sample such as sample:teacher"
    )


def _load_weights(source: ModelSource, dtype: torch.dtype, allow_pickle: bool, trust_remote_code: bool,
                  local_only: bool) -> nn.Module:
    from huggingface_hub.errors import RepositoryNotFoundError
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "local_files_only": local_only}
    if source.gguf_file:
        with _unusable_file(source, source.gguf_file):
            return AutoModelForCausalLM.from_pretrained(source.location, gguf_file=source.gguf_file, **kwargs)
    if source.kind != "hub":  # missing or misshapen tensors would be random: report them instead
        kwargs.update(output_loading_info=True, ignore_mismatched_sizes=True)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source.location, use_safetensors=None if allow_pickle else True,
                                                      **kwargs)
    except SafetensorError as exc:
        raise ModelFileError(f"the weights of {source.ref} cannot be read ({exc}); {files.REDO}") from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(f"the Hub has no model {source.ref!r} (or it is private); check the id") from exc
    except OSError as exc:
        if not allow_pickle and "safetensors" in str(exc).lower():
            raise UnsafeModelError(
                f"{source.ref} offers no safetensors weights; pickle weights are refused unless you pass "
                "allow_pickle (CLI: --allow-pickle)"
            ) from exc
        raise
    if source.kind == "hub":
        return loaded
    model, info = loaded
    files.check_loading_info(info, source.ref)
    return model


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False, local_only: bool = True):
    """The model's tokenizer, with a pad token (the EOS token when the model defines none)."""
    from transformers import AutoTokenizer

    try:
        if source.gguf_file:
            tokenizer = AutoTokenizer.from_pretrained(source.location, gguf_file=source.gguf_file)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.location, trust_remote_code=trust_remote_code,
                                                      local_files_only=local_only)
    except (OSError, ValueError) as exc:  # what transformers raises for tokenizer files it cannot find or use
        if source.kind == "hub":
            raise
        raise ModelFileError(
            f"cannot load the tokenizer of {source.ref} from {source.location} ({' '.join(str(exc).split())[:300]}); "
            "the folder needs the tokenizer files the model was saved with (tokenizer.json, tokenizer_config.json): "
            f"copy them in, or {files.REDO}") from exc
    return ensure_pad_token(tokenizer)


def cache_dir() -> Path:
    """Where converted models are cached (env ``SQUEEZELAB_CACHE_DIR``, default ~/.cache/squeezelab)."""
    return Path(os.environ.get("SQUEEZELAB_CACHE_DIR", Path.home() / ".cache" / "squeezelab")).expanduser()


def gguf_as_folder(source: ModelSource, check_free_memory: bool = True) -> Path:
    """A Hugging Face folder (fp32 safetensors) holding the dequantized GGUF model, converted once.

    Reading a GGUF file through transformers parses it once per config, tokenizer and weights;
    converting once and caching makes every later load as fast as a local folder. The families
    transformers cannot rebuild faithfully are read by ``core.models.gguf_read``.
    """
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelNotFoundError(
            f"reading {source.ref} needs the package(s) {', '.join(missing)}: pip install 'squeezelab[gguf]'"
        )
    gguf_path = Path(source.location) / source.gguf_file
    stat = gguf_path.stat()
    folder = cache_dir() / "gguf" / f"{gguf_path.stem}-{stat.st_size:x}-{int(stat.st_mtime):x}"
    if (folder / "config.json").is_file():
        return folder
    files.check_gguf(gguf_path)
    own = reads_itself(gguf_path)  # GPT-2, GPT-NeoX, Falcon: transformers' GGUF loader cannot rebuild them
    config = gguf_config(gguf_path) if own else read_config(source)
    if check_free_memory:
        check_memory(estimate_weight_bytes(config, torch.float32), torch.device("cpu"), source.ref)
    if own:
        model, tokenizer = read_gguf(gguf_path)
    else:
        model, tokenizer = _load_weights(source, torch.float32, False, False, True), load_tokenizer(source)
    scratch = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    try:
        _save_dequantized(model, scratch)
        tokenizer.save_pretrained(scratch)
        (scratch / "source.json").write_text(json.dumps({"gguf": str(gguf_path.resolve()), "size": stat.st_size}))
        scratch.rename(folder)
    except Exception as exc:
        shutil.rmtree(scratch, ignore_errors=True)  # never leave a half-written cache entry
        if (folder / "config.json").is_file():  # another process may have won the race
            return folder
        if isinstance(exc, OSError):
            raise ModelFileError(f"cannot write the converted {source.ref} into the cache {folder.parent} "
                                 f"({exc.strerror or exc}); free some space there or set SQUEEZELAB_CACHE_DIR to "
                                 "a writable folder") from exc
        raise
    return folder


def _save_dequantized(model: nn.Module, folder: Path) -> None:
    """Write a GGUF-loaded model as a plain fp32 folder (config + safetensors).

    transformers marks GGUF-loaded models as quantized and refuses ``save_pretrained``, although the
    weights in memory are already dequantized; the config is saved without that marker.
    """
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(model.config)
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})


def clone(model: nn.Module) -> nn.Module:
    """An independent deep copy: changing it never changes the original (a cached base model)."""
    return copy.deepcopy(model)
