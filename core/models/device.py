"""Where a model runs and in what precision, whether its weights fit in free memory, and its shapes without weights.

``meta_model`` builds a model from its config on PyTorch's meta device: every module and shape, no memory and
no weights. Checks that must run before loading (``core.recipe.preflight``) and the weight estimate use it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import DeviceError, InsufficientMemoryError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

MEMORY_HEADROOM = 1.2  # weights plus activations, buffers and the allocator's slack


def pick_device(requested: str | None = None) -> torch.device:
    """``auto``/None picks cuda > mps > cpu; an explicit device must exist on this machine."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {requested!r} was asked for but CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {requested!r}: only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device 'mps' was asked for but Metal is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {requested!r} is not supported; use auto, cpu, cuda or mps")
    return device


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    """``auto``/None: fp32 on CPU, bf16 on GPUs that support it, else fp16."""
    if requested in (None, "", "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if requested not in DTYPES:
        raise DeviceError(f"unknown dtype {requested!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[requested]


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new weights on ``device`` (available RAM for the CPU and MPS)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def meta_model(config, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The config's causal-LM class instantiated on the meta device: real modules and shapes, no weights.

    A loader's quantization marker is left out of the config (the modules it describes are swapped in by
    whoever knows them, e.g. ``core.quantize.apply.quantize_planned_``).
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def estimate_weight_bytes(config, dtype: torch.dtype) -> int:
    """Bytes the weights need in ``dtype``, counted on a meta-device instance of the config."""
    return sum(p.numel() for p in meta_model(config).parameters()) * torch.tensor([], dtype=dtype).element_size()


def tensor_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers (a shared tensor once); works on a meta-device model."""
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


@dataclass(frozen=True)
class ModelDims:
    """The sizes that decide how much working memory calibration, evaluation and training take."""

    hidden: int  # width of the hidden states between blocks
    layers: int  # decoder blocks
    heads: int  # attention heads (score matrices per block)
    head_dim: int  # width of one head (the rotary tables passed to every block)
    widest: int  # the widest activation inside a block (the MLP's inner width, usually)
    vocab: int  # rows of the output projection (logits per token)
    context: int  # positions the model attends over
    params: int  # parameters
    element_bytes: int  # bytes per weight / activation value in the model's dtype
    eager_attention: bool  # eager attention materializes [seqlen, seqlen] masks and scores


def model_dims(model: nn.Module, context: int) -> ModelDims:
    """``ModelDims`` of a (meta-device or real) causal LM; ``context`` as ``core.models.source.context_length``."""
    from core.layers import is_linear, weight_matrix

    config = model.config
    hidden = int(config.hidden_size)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    # the longest list of alike modules: the decoder blocks, whether their layers are linear or packed
    blocks = max((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
                  and len({type(c) for c in m}) == 1), key=len)
    widths = [max(weight_matrix(m).shape) if is_linear(m) else max(getattr(m, "in_features", 0),
                                                                     getattr(m, "out_features", 0))
              for m in blocks[0].modules()]
    head = model.get_output_embeddings()
    vocab = int(head.weight.shape[0]) if getattr(head, "weight", None) is not None else int(config.vocab_size)
    parameter = next(model.parameters())
    return ModelDims(hidden=hidden, layers=len(blocks), heads=heads, head_dim=head_dim, widest=max([hidden, *widths]),
                     vocab=vocab, context=context, params=sum(p.numel() for p in model.parameters()),
                     element_bytes=parameter.element_size(),
                     eager_attention=getattr(config, "_attn_implementation", "eager") == "eager")


def check_memory(needed: int, device: torch.device, what: str) -> None:
    """Refuse, with numbers, to load what would not fit in free memory."""
    free = free_memory_bytes(device)
    if needed * MEMORY_HEADROOM > free:
        raise InsufficientMemoryError(
            f"{what} needs about {needed / 2**30:.2f} GiB for its weights (x{MEMORY_HEADROOM} with working memory) "
            f"but only {free / 2**30:.2f} GiB is free on {device}; choose a smaller model, a 16-bit dtype "
            "(--dtype bf16/fp16) or another device"
        )
