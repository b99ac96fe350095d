"""``QuantLinear``: a linear layer whose weight is stored as packed integer codes, and its kernels.

The stored form (its state dict) is always the same: ``qweight`` uint8 [out, ceil(in * bits / 8)]
(codes packed as a bit stream per row, see ``core.quantize.scheme.pack_codes``; for 8 bits, int8 codes
``u - 128``), ``scales`` fp16 [out, groups], ``zeros`` uint8 [out, groups] for asymmetric schemes,
and ``bias``. What runs in ``forward`` is the layer's *kernel*:

* ``dequant``           - unpack and dequantize to the input's dtype on every call, then a dense matmul;
                           always available, never faster than dense.
* ``int8_weight_only``  - 8-bit symmetric per channel: ``aten._weight_int8pack_mm`` reads the int8
                           weights (on CPU with bf16 activations, the only dtype it is fast for).
* ``int4_weight_only``  - 4-bit, group 32/64/128/256: ``aten._weight_int4pack_mm_for_cpu`` (CPU, bf16
                           activations) or the tinygemm ``aten._weight_int4pack_mm`` (CUDA, bf16), on
                           weights repacked once into the kernel's layout (which then replaces the
                           stored form in memory).
* ``int8_dynamic``      - 8-bit symmetric per channel weights and int8 activations with one scale per
                           token, computed on the fly: fbgemm's dynamic int8 linear on CPU (weights
                           prepacked once), an int8 x int8 -> int32 ``torch._int_mm`` on CUDA. Its
                           weights are rounded to codes within +-64 (``FBGEMM_SAFE_RADIUS``), which
                           lets fbgemm take 8-bit activations instead of 7 (``kernels.fbgemm_reduce_range``).

``core.quantize.kernel_choice`` chooses the kernel (``auto`` picks the fastest that exists for the device)
and the result row's ``kernel`` field names it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SpecError
from core.quantize.kernels import (
    fbgemm_codes,
    fbgemm_per_token_matmul,
    fbgemm_prepack,
    fbgemm_reduce_range,
    int4_codes_from_kernel,
    int4_kernel_state,
    int4_matmul,
    int8_dynamic_matmul,
    int8_kernel_scales,
    int8_weight_only_matmul,
    kernel_unavailable,
)
from core.quantize.scheme import (
    QuantizedMatrix,
    QuantScheme,
    dequantize_codes,
    pack_codes,
    packed_columns,
    unpack_codes,
)


class QuantLinear(nn.Module):
    """y = x W^T + b with W held as packed ``bits``-bit codes, scales and zero points."""

    def __init__(self, in_features: int, out_features: int, scheme: QuantScheme, bias: bool,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        scheme.check_columns(in_features)
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        groups = in_features // scheme.group_width(in_features)
        code_dtype = torch.int8 if scheme.bits == 8 else torch.uint8
        self.register_buffer("qweight", torch.zeros(out_features, packed_columns(in_features, scheme.bits),
                                                    dtype=code_dtype, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=torch.float16, device=device))
        zeros = None if scheme.symmetric else torch.zeros(out_features, groups, dtype=torch.uint8, device=device)
        self.register_buffer("zeros", zeros)
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self.kernel = "dequant"
        # what a kernel needs besides the stored form: buffers, so they move with .to() and count in sizes
        self.register_buffer("kernel_weight", None, persistent=False)  # int4: the kernel's own layout
        self.register_buffer("kernel_scales", None, persistent=False)
        self._prepacked = None  # int8_dynamic on CPU: fbgemm's packed weight object
        self._reduce_range = True  # ... and whether it must quantize activations to 7 bits

    @classmethod
    def from_matrix(cls, matrix: QuantizedMatrix, scheme: QuantScheme, bias: torch.Tensor | None,
                    dtype: torch.dtype) -> QuantLinear:
        """Pack a quantized matrix (codes [out, in], scale/zero [out, groups]) into a new layer."""
        out_features, in_features = matrix.codes.shape
        layer = cls(in_features, out_features, scheme, bias is not None, dtype, matrix.codes.device)
        layer.set_codes(matrix.codes)
        # fp16 scales are what is stored, so quantizers must see them rounded the same way
        layer.scales.copy_(matrix.scale.to(torch.float16))
        if layer.zeros is not None:
            layer.zeros.copy_(matrix.zero.to(torch.uint8))
        if bias is not None:
            layer.bias.data.copy_(bias.detach().to(dtype))
        return layer

    # ---- the stored form ----

    def set_codes(self, codes: torch.Tensor) -> None:
        """Store uint8 codes [out, in] (replaces any kernel layout)."""
        self.qweight = stored_form(codes.contiguous(), self.scheme.bits).to(self.scales.device)
        self.kernel_weight = self.kernel_scales = self._prepacked = None
        self.kernel = "dequant"

    def codes(self) -> torch.Tensor:
        """uint8 codes [out, in], whatever layout the kernel keeps in memory."""
        if self.kernel == "int4_weight_only" and self.kernel_weight is not None:
            return int4_codes_from_kernel(self.kernel_weight, self.scheme.group_size, self.scales.shape)
        if self.kernel == "int8_dynamic" and self._prepacked is not None:
            return fbgemm_codes(self._prepacked)
        if self.scheme.bits == 8:
            return (self.qweight.to(torch.int16) + 128).to(torch.uint8)
        return unpack_codes(self.qweight, self.scheme.bits, self.in_features)

    @property
    def logical_params(self) -> int:
        """How many weights the codes stand for (``core.evaluate.size.measure_size`` counts these)."""
        return self.in_features * self.out_features

    @property
    def logical_nonzero(self) -> int:
        """Weights whose code is not the zero point, i.e. that dequantize to a non-zero value."""
        zero = self.zero_points().repeat_interleave(self.scheme.group_width(self.in_features), dim=1)
        return int((self.codes().float() != zero).sum())

    def zero_points(self) -> torch.Tensor:
        """Zero points [out, groups] (float32): stored ones, or 2^(bits-1) for a symmetric scheme."""
        if self.zeros is not None:
            return self.zeros.float()
        return torch.full(self.scales.shape, float(1 << (self.scheme.bits - 1)), device=self.scales.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight [out, in] the codes stand for."""
        return dequantize_codes(self.codes(), self.scales.float(), self.zero_points(), dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - nn.Module's signature
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.qweight.numel() == 0:  # a kernel holds the weights in its own layout: save the portable one
            destination[prefix + "qweight"] = stored_form(self.codes(), self.scheme.bits)

    @property
    def opaque_bytes(self) -> int:
        """Bytes held outside tensors (fbgemm's prepacked int8 weights, scales, zero points, offsets)."""
        return self.in_features * self.out_features + 16 * self.out_features if self._prepacked is not None else 0

    # ---- kernels ----

    def use_kernel(self, kernel: str) -> None:
        """Switch what ``forward`` runs; raises SpecError (with the reason) when it cannot run here."""
        device = self.scales.device
        reason = kernel_unavailable(kernel, self.scheme, self.in_features, device, self.out_features)
        if reason:
            raise SpecError(f"kernel {kernel} cannot run this layer: {reason}")
        if self.kernel != "dequant":
            self.set_codes(self.codes())  # back to the stored form before preparing another kernel
        self.kernel = kernel
        if kernel == "int8_weight_only":
            self.kernel_scales = int8_kernel_scales(self.scales)
        elif kernel == "int8_dynamic":
            self.kernel_scales = self.scales.float().squeeze(1)
        if kernel == "int4_weight_only":
            state = int4_kernel_state(self.codes(), self.scales.float(), self.zero_points())
            self.kernel_weight, self.kernel_scales = state
            self.qweight = torch.empty(0, dtype=torch.uint8, device=device)  # one copy in memory
        elif kernel == "int8_dynamic" and device.type == "cpu":
            self._prepacked = fbgemm_prepack(self.qweight, self.kernel_scales)
            self._reduce_range = fbgemm_reduce_range(self.qweight)
            self.qweight = torch.empty(0, dtype=torch.int8, device=device)
            self.kernel_scales = None

    def row_matmul(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """A callable for 2-D inputs [tokens, in] that skips the reshapes of ``forward`` where it can
        (used by the decode loop of ``core.evaluate.decode``, where per-call overhead is what limits speed)."""
        if self._prepacked is not None and self.bias is None:
            prepacked, reduce_range = self._prepacked, self._reduce_range

            def one_token_int8(x: torch.Tensor) -> torch.Tensor:
                if x.shape[0] == 1 and x.dtype == torch.float32:
                    return torch.ops.quantized.linear_dynamic(x, prepacked, reduce_range)
                return self.forward(x)

            return one_token_int8
        return self.forward

    @staticmethod
    def stacked_matmul(layers: Sequence[nn.Module], row_factors: Sequence[float]
                       ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """One fbgemm call for int8_dynamic layers that read the same input (q/k/v, gate/up).

        Their int8 rows and per-row scales are stacked into one packed matrix (each layer's scales times
        its factor). With one scale per weight row and one activation range per call, the stacked output
        equals the separate outputs side by side, while the input is quantized once and the kernel is
        entered once. None when a layer is not int8_dynamic on fbgemm or has a bias.
        """
        if not all(isinstance(layer, QuantLinear) and layer._prepacked is not None and layer.bias is None
                   for layer in layers):
            return None
        rows, scales = [], []
        for layer, factor in zip(layers, row_factors, strict=True):
            weight, _ = torch.ops.quantized.linear_unpack(layer._prepacked)
            rows.append(weight.int_repr())
            scales.append(weight.q_per_channel_scales() * factor)
        weight_int8 = torch.cat(rows)
        prepacked, reduce_range = fbgemm_prepack(weight_int8, torch.cat(scales)), fbgemm_reduce_range(weight_int8)
        return lambda x: fbgemm_per_token_matmul(x, prepacked, reduce_range)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == "dequant":
            return F.linear(x, self.dequantized_weight(x.dtype), self.bias)
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        if self.kernel == "int8_weight_only":
            out = int8_weight_only_matmul(flat, self.qweight, self.kernel_scales)
        elif self.kernel == "int4_weight_only":
            out = int4_matmul(flat, self.kernel_weight, self.scheme.group_size, self.kernel_scales)
        elif self._prepacked is not None:
            out = fbgemm_per_token_matmul(flat, self._prepacked, self._reduce_range)
        else:
            out = int8_dynamic_matmul(flat, self.qweight, self.kernel_scales)
        out = out.reshape(*shape[:-1], self.out_features)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        s = self.scheme
        group = f"g{s.group_size}" if s.group_size else "per-channel"
        return (f"in={self.in_features}, out={self.out_features}, {s.bits}-bit {group} "
                f"{'sym' if s.symmetric else 'asym'}, kernel={self.kernel}")


def stored_form(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """What ``qweight`` holds for uint8 codes [out, in]: int8 ``codes - 128`` for 8 bits, else packed bits."""
    return (codes.to(torch.int16) - 128).to(torch.int8) if bits == 8 else pack_codes(codes, bits)
