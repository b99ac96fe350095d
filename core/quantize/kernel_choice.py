"""Which kernel each ``QuantLinear`` of a model runs, and a one-line summary of what runs the matmuls."""

from __future__ import annotations

from torch import nn

from core.quantize.kernels import kernel_unavailable
from core.quantize.qembedding import TiedQuantEmbedding
from core.quantize.qlinear import QuantLinear


def choose_kernels(model: nn.Module, requested: str = "auto") -> tuple[dict[str, int], list[str]]:
    """Set the kernel of every QuantLinear; returns ({kernel: layer count}, notes on fallbacks).

    ``auto`` takes the integer weight-only kernel where the layer's scheme and device have one, and
    dequantize-on-the-fly otherwise. A requested kernel that cannot run a layer falls back to
    ``dequant`` for that layer, and a note says which and why.
    """
    counts: dict[str, int] = {}
    notes: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, QuantLinear):
            continue
        kernel = requested if requested != "auto" else _auto_kernel(module)
        reason = kernel_unavailable(kernel, module.scheme, module.in_features, module.scales.device,
                                    module.out_features)
        if reason:
            notes.append(f"{name}: {kernel} unavailable ({reason}); dequantizing on the fly instead")
            kernel = "dequant"
        module.use_kernel(kernel)
        counts[kernel] = counts.get(kernel, 0) + 1
    for module in model.modules():
        if isinstance(module, TiedQuantEmbedding):
            module.follow_head_kernel()
    return counts, notes


def _auto_kernel(module: QuantLinear) -> str:
    device = module.scales.device
    for kernel in ("int4_weight_only", "int8_weight_only"):
        if kernel_unavailable(kernel, module.scheme, module.in_features, device, module.out_features) is None:
            return kernel
    return "dequant"


def kernel_summary(model: nn.Module) -> str | None:
    """'4-bit int4_weight_only x210, rest dense float32 (torch cpu)': what runs the matmuls (None: no
    quantized layer). Embeddings, norms and unquantized layers run dense in the model's dtype."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear):
            label = f"{module.scheme.bits}-bit {module.kernel}"
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    parameter = next(model.parameters())
    rest = f"rest dense {str(parameter.dtype).replace('torch.', '')}"
    return ", ".join(f"{label} x{count}" for label, count in sorted(counts.items())) + \
        f", {rest} (torch {parameter.device.type})"
