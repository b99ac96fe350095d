"""Where a model runs and in what precision, and whether its weights fit in free memory."""

from __future__ import annotations

import torch

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


def estimate_weight_bytes(config, dtype: torch.dtype) -> int:
    """Bytes the weights need in ``dtype``, counted on a meta-device instance of the config."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in skeleton.parameters()) * torch.tensor([], dtype=dtype).element_size()


def check_memory(needed: int, device: torch.device, what: str) -> None:
    """Refuse, with numbers, to load what would not fit in free memory."""
    free = free_memory_bytes(device)
    if needed * MEMORY_HEADROOM > free:
        raise InsufficientMemoryError(
            f"{what} needs about {needed / 2**30:.2f} GiB for its weights (x{MEMORY_HEADROOM} with working memory) "
            f"but only {free / 2**30:.2f} GiB is free on {device}; choose a smaller model, a 16-bit dtype "
            "(--dtype bf16/fp16) or another device"
        )
