"""The integer matmul kernels a ``QuantLinear`` can run, as functions on tensors, and which can run where.

* int8 weight-only: ``aten._weight_int8pack_mm`` on int8 weights [out, in] and per-row scales.
* int4 weight-only: ``aten._weight_int4pack_mm_for_cpu`` (CPU) or the tinygemm ``_weight_int4pack_mm``
  (CUDA) on weights repacked once into the kernel's own layout.
* int8 dynamic: activations quantized per token at run time; fbgemm's dynamic int8 linear on the CPU
  (weights prepacked once), ``torch._int_mm`` (int8 x int8 -> int32) on CUDA.

Every kernel computes in the precision its fast path needs (bf16 activations for the weight-only
CPU kernels) and returns the input's dtype. Weights and scales are packed once, in the layout and
dtype the kernel reads (``int4_kernel_state``, ``int8_kernel_scales``, ``fbgemm_prepack``); a call only
converts the activations, and not even those when the model already runs in bf16.
"""

from __future__ import annotations

import torch

from core.quantize.scheme import QuantScheme

KERNELS = ("dequant", "int8_weight_only", "int4_weight_only", "int8_dynamic")
# int8 weight codes within +-64 never overflow fbgemm's int16 pair sums with full 8-bit activations
FBGEMM_SAFE_RADIUS = 64
INT4_GROUPS = (32, 64, 128, 256)
INT4_CPU_ROWS = 16  # aten._convert_weight_to_int4pack_for_cpu packs output rows in blocks of 16


def kernel_unavailable(kernel: str, scheme: QuantScheme, in_features: int, device: torch.device,
                       out_features: int | None = None) -> str | None:
    """Why ``kernel`` cannot run a layer of this scheme on ``device`` (None: it can); ``out_features``
    when known (the CPU int4 kernel packs output rows 16 at a time)."""
    if kernel not in KERNELS:
        return f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}"
    per_channel_int8 = scheme.bits == 8 and scheme.symmetric and scheme.group_size is None
    if kernel in ("int8_weight_only", "int8_dynamic") and not per_channel_int8:
        return "it needs 8-bit symmetric weights with one scale per output channel (group_size null)"
    if kernel == "int8_dynamic" and device.type != "cpu" and device.type != "cuda":
        return f"torch._int_mm has no {device.type} kernel"
    if kernel == "int4_weight_only":
        if scheme.bits != 4 or scheme.group_size not in INT4_GROUPS:
            return f"it needs 4-bit weights in groups of {', '.join(map(str, INT4_GROUPS))}"
        if device.type not in ("cpu", "cuda"):
            return f"there is no int4 kernel for {device.type}"
        if device.type == "cuda" and in_features % 1024:
            return "the CUDA tinygemm kernel needs an input width that is a multiple of 1024"
        if device.type == "cpu" and out_features is not None and out_features % INT4_CPU_ROWS:
            return f"the CPU int4 kernel needs an output width that is a multiple of {INT4_CPU_ROWS}"
    return None


# ---- int4: the aten kernels compute (q - 8) * scale + zero per group, on their own packed layout ----


def int4_kernel_state(codes: torch.Tensor, scale: torch.Tensor,
                      zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel-packed weight, scales_and_zeros [groups, out, 2]) for codes [out, in] and scale/zero [out, groups]."""
    # (u - z) * s  ==  (u - 8) * s + (8 - z) * s
    offset = (8 - zero) * scale
    scales_and_zeros = torch.stack([scale.t(), offset.t()], dim=2).contiguous()
    if codes.device.type == "cuda":
        nibbles = codes.to(torch.uint8)
        packed = torch.ops.aten._convert_weight_to_int4pack((nibbles[:, ::2] << 4) | nibbles[:, 1::2], 8)
        return packed, scales_and_zeros.to(torch.bfloat16)
    # bf16 scales: the CPU kernel's fast path; converting them on every call cost as much as a small matmul
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    return packed, scales_and_zeros.to(torch.bfloat16)


def int4_matmul(flat: torch.Tensor, kernel_weight: torch.Tensor, group: int,
                scales_and_zeros: torch.Tensor) -> torch.Tensor:
    """x [tokens, in] @ W^T with W in the int4 kernel layout: [tokens, out] in x's dtype."""
    if flat.device.type == "cuda":
        out = torch.ops.aten._weight_int4pack_mm(flat.to(torch.bfloat16), kernel_weight, group, scales_and_zeros)
        return out.to(flat.dtype)
    # the CPU kernel is vectorized for bf16 activations only (float32 input runs ~20x slower);
    # ``.to`` returns its input untouched when the dtype already matches (a bf16 model, the packed scales)
    out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.to(torch.bfloat16), kernel_weight, group,
                                                     scales_and_zeros.to(torch.bfloat16))
    return out.to(flat.dtype)


def int4_codes_from_kernel(kernel_weight: torch.Tensor, group: int, scales_shape: torch.Size) -> torch.Tensor:
    """Read the codes [out, in] back out of the kernel layout: run the kernel on the identity with scale 1, zero 8.

    ``scales_shape`` is the layer's [out, groups]. In bf16 (the kernels' fast path); codes 0..15 are exact in bf16.
    """
    out_features, groups = scales_shape
    device = kernel_weight.device
    unit = torch.stack([torch.ones(groups, out_features), torch.full((groups, out_features), 8.0)], dim=2)
    unit = unit.to(device, torch.bfloat16)
    eye = torch.eye(groups * group, device=device, dtype=torch.bfloat16)
    if device.type == "cuda":
        values = torch.ops.aten._weight_int4pack_mm(eye, kernel_weight, group, unit)
    else:
        values = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, kernel_weight, group, unit)
    return values.float().t().round().to(torch.uint8)  # [out, in]


def int8_kernel_scales(scales: torch.Tensor) -> torch.Tensor:
    """Per-row scales [out] for ``int8_weight_only_matmul``, made once: bf16 on the CPU (what its kernel
    computes in); float32 elsewhere, where the kernel computes in the activations' dtype."""
    return scales.float().reshape(-1).to(torch.bfloat16 if scales.device.type == "cpu" else torch.float32)


def int8_weight_only_matmul(flat: torch.Tensor, weight_int8: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x [tokens, in] @ (int8 W [out, in] * scales [out])^T; on CPU in bf16, the kernel's fast path.

    ``scales`` come from ``int8_kernel_scales``; the ``.to`` calls are no-ops when the dtypes match."""
    compute = torch.bfloat16 if flat.device.type == "cpu" else flat.dtype
    return torch.ops.aten._weight_int8pack_mm(flat.to(compute), weight_int8, scales.to(compute)).to(flat.dtype)


# ---- int8 dynamic: activations quantized per token, integer matmul, rescale ----


def fbgemm_prepack(weight_int8: torch.Tensor, scales: torch.Tensor):  # noqa: ANN201 - an opaque torch object
    """fbgemm's packed form of int8 weights [out, in] with per-row scales [out] (symmetric: zero points 0)."""
    zero_points = torch.zeros(weight_int8.shape[0], dtype=torch.int64)
    quantized = torch._make_per_channel_quantized_tensor(weight_int8.cpu(), scales.double().cpu(), zero_points, 0)
    return torch.ops.quantized.linear_prepack(quantized, None)


def fbgemm_reduce_range(weight_int8: torch.Tensor) -> bool:
    """Whether fbgemm must quantize the activations to 7 bits for these int8 weights [out, in].

    Its AVX2 kernel multiplies uint8 activations by int8 weights and adds adjacent pairs in int16
    (``vpmaddubsw``), which saturates once 2 * 255 * |w| > 32767. With every |w| <= 64 that cannot
    happen, so full 8-bit activations are exact; other weights need ``reduce_range`` (7-bit
    activations: half the resolution, the main int8 error on this kind of CPU).
    """
    return int(weight_int8.to(torch.int16).abs().max()) > FBGEMM_SAFE_RADIUS


def fbgemm_codes(prepacked) -> torch.Tensor:  # noqa: ANN001
    """uint8 codes [out, in] (int8 + 128) of an fbgemm-prepacked weight."""
    weight, _ = torch.ops.quantized.linear_unpack(prepacked)
    return (weight.int_repr().to(torch.int16) + 128).to(torch.uint8)


def fbgemm_per_token_matmul(flat: torch.Tensor, prepacked, reduce_range: bool) -> torch.Tensor:  # noqa: ANN001
    """fbgemm's dynamic int8 linear with a scale per token: x [tokens, in] -> [tokens, out].

    The kernel quantizes its whole input with one (min, max) range. Dividing every token by its own
    max |x| first puts all tokens on [-1, 1], so that one range is in effect a range per token; the
    outputs are multiplied back. One token with huge activations then no longer flattens every other
    token's resolution (what ruins perplexity with a per-tensor scale).
    """
    x = flat.float()
    if x.shape[0] == 1:  # one token (a decode step): its own range is the per-tensor range
        return torch.ops.quantized.linear_dynamic(x, prepacked, reduce_range).to(flat.dtype)
    peak = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8)  # [tokens, 1]
    out = torch.ops.quantized.linear_dynamic(x / peak, prepacked, reduce_range)
    return (out * peak).to(flat.dtype)


def int8_dynamic_matmul(flat: torch.Tensor, weight_int8: torch.Tensor, weight_scales: torch.Tensor) -> torch.Tensor:
    """x [tokens, in] float, W int8 [out, in], per-row weight scales [out] -> x W^T [tokens, out] (CUDA path)."""
    x = flat.float()
    tokens = x.shape[0]
    if tokens <= 16:  # cuBLAS int8 GEMM (torch._int_mm) wants more than 16 rows: pad, then drop the padding
        x = torch.nn.functional.pad(x, (0, 0, 0, 17 - tokens))
    x_scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=1e-8) / 127.0  # [tokens, 1]
    x_int8 = torch.round(x / x_scale).clamp_(-127, 127).to(torch.int8)
    acc = torch._int_mm(x_int8, weight_int8.t())  # int32 [tokens, out]
    return (acc.float() * x_scale * weight_scales)[:tokens].to(flat.dtype)
