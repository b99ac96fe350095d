"""Integer weight quantization on tensors: schemes, scales and zero points, RTN, packing, error metrics.

Everything here is a pure function on tensors; ``core.quantize.apply`` walks the model and swaps modules.

Codes are unsigned integers ``u`` in [0, 2^bits - 1] with one scale ``s`` and one zero point ``z``
per (output row, group of ``group_size`` input columns); the weight they stand for is
``(u - z) * s``. A symmetric scheme fixes ``z = 2^(bits-1)`` and ``s = max|w| / ((2^bits - 1) / 2)``
(the signed range [-2^(bits-1), 2^(bits-1) - 1], the convention of compressed-tensors); an
asymmetric one spans [min(w, 0), max(w, 0)] of the group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.errors import SpecError

BITS_RANGE = (2, 8)

GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class QuantScheme:
    """How one matrix is quantized: ``bits`` per weight, ``group_size`` input columns per scale (None:
    one scale per output row), symmetric or asymmetric."""

    bits: int = 4
    group_size: int | None = None
    symmetric: bool = True
    # symmetric only: keep codes within zero +- code_radius (None: the full signed range). The stored
    # form is unchanged (still ``bits`` per code); a narrower grid is what a kernel may need, e.g.
    # int8_dynamic on fbgemm (see core.quantize.kernels.FBGEMM_SAFE_RADIUS).
    code_radius: int | None = None

    def __post_init__(self) -> None:
        low, high = BITS_RANGE
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not low <= self.bits <= high:
            raise SpecError(f"bits must be a whole number from {low} to {high}, got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 1):
            raise SpecError(f"group_size must be a positive whole number (e.g. {', '.join(map(str, GROUP_SIZES))}) "
                            f"or null for one scale per output channel, got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise SpecError(f"symmetric must be true or false, got {self.symmetric!r}")
        if self.code_radius is not None and (not self.symmetric or not 1 <= self.code_radius < 1 << (self.bits - 1)):
            raise SpecError(f"code_radius must be from 1 to {(1 << (self.bits - 1)) - 1} on a symmetric scheme, "
                            f"got {self.code_radius!r}")

    @property
    def levels(self) -> int:
        """Largest code, 2^bits - 1."""
        return (1 << self.bits) - 1

    def code_bounds(self) -> tuple[int, int]:
        """Smallest and largest code this scheme uses."""
        if self.code_radius is None:
            return 0, self.levels
        zero = 1 << (self.bits - 1)
        return zero - self.code_radius, zero + self.code_radius

    def group_width(self, columns: int) -> int:
        """Columns per scale for a matrix with ``columns`` inputs (all of them when per channel)."""
        return self.group_size or columns

    def check_columns(self, columns: int, layer: str = "this layer", others: tuple[int, ...] = ()) -> None:
        """Refuse a group size that does not divide the input width; name the nearest sizes that do, for this
        layer and for the input widths ``others`` of every other layer the same step quantizes at this size
        (a hint valid for one layer only would be refused on the next)."""
        if self.group_size is None or columns % self.group_size == 0:
            return
        nearest = group_sizes_near(self.group_size, (columns, *others))
        every = ", each dividing every layer this step quantizes" if set(others) - {columns} else ""
        valid = (f"valid sizes near it: {', '.join(map(str, nearest))}{every}" if nearest
                 else "no size divides the input widths of every layer this step quantizes")
        raise SpecError(f"group_size {self.group_size} does not divide the {columns} input columns of {layer}; "
                        f"{valid} (or null: per channel), or exclude the layer with an override")

    def bits_per_weight(self, columns: int) -> float:
        """Storage per weight counting fp16 scales and (asymmetric) 8-bit zero points."""
        per_group = 16 + (0 if self.symmetric else 8)
        return self.bits + per_group / self.group_width(columns)


def group_sizes_near(group_size: int, widths: tuple[int, ...], count: int = 3) -> list[int]:
    """Up to ``count`` group sizes nearest ``group_size`` that divide every one of ``widths`` (multiples of 8 where
    any exist), ascending; empty when only per-channel scales fit them all."""
    common = math.gcd(*widths)
    divisors = [d for d in range(8, common + 1, 8) if common % d == 0] or \
               [d for d in range(2, common + 1) if common % d == 0]
    return sorted(sorted(divisors, key=lambda d: (abs(d - group_size), d))[:count])


def qparams(weight: torch.Tensor, scheme: QuantScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero), each [out, groups] float32, for ``weight`` [out, in] under ``scheme``."""
    rows, columns = weight.shape
    width = scheme.group_width(columns)
    groups = weight.detach().float().reshape(rows, columns // width, width)
    if scheme.symmetric:
        scale = groups.abs().amax(dim=2) / (scheme.code_radius or scheme.levels / 2)
        zero = torch.full_like(scale, float(1 << (scheme.bits - 1)))
    else:
        low = groups.amin(dim=2).clamp(max=0)
        high = groups.amax(dim=2).clamp(min=0)
        scale = (high - low) / scheme.levels
        zero = torch.round(-low / scale.clamp(min=torch.finfo(torch.float32).tiny)).clamp(0, scheme.levels)
    return scale.clamp(min=1e-10), zero  # an all-zero group gets a tiny scale, so its codes are all z


def _expand(per_group: torch.Tensor, columns: int) -> torch.Tensor:
    """[out, groups] -> [out, columns], each group's value repeated over its columns."""
    return per_group.repeat_interleave(columns // per_group.shape[1], dim=1)


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Codes uint8 [out, in] = clamp(round(w / s) + z, low, high), with [out, groups] ``scale``/``zero``
    and (low, high) the scheme's ``code_bounds()``."""
    columns = weight.shape[1]
    low, high = scheme.code_bounds()
    codes = torch.round(weight.float() / _expand(scale, columns)) + _expand(zero, columns)
    return codes.clamp_(low, high).to(torch.uint8)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights [out, in] = (codes - z) * s in ``dtype``, with [out, groups] ``scale``/``zero``."""
    columns = codes.shape[1]
    values = (codes.float() - _expand(zero.float(), columns)) * _expand(scale.float(), columns)
    return values.to(dtype)


def fake_quantize(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """Round-to-nearest quantize and dequantize ``weight`` [out, in]; same dtype as given."""
    scale, zero = qparams(weight, scheme)
    codes = quantize_codes(weight, scale, zero, scheme)
    return dequantize_codes(codes, scale, zero, weight.dtype)


@dataclass(frozen=True)
class QuantizedMatrix:
    """Codes uint8 [out, in], scale and zero [out, groups] (float32): what a QuantLinear stores."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_codes(self.codes, self.scale, self.zero, dtype)


def rtn_quantize(weight: torch.Tensor, scheme: QuantScheme) -> QuantizedMatrix:
    """Round-to-nearest: each weight to its nearest code with min-max scales per row or group."""
    scale, zero = qparams(weight, scheme)
    return QuantizedMatrix(quantize_codes(weight, scale, zero, scheme), scale, zero)


# ---- packing: codes of any width 2..8 as a little-endian bit stream per row ----


def packed_columns(columns: int, bits: int) -> int:
    """Bytes per row holding ``columns`` codes of ``bits`` bits."""
    return math.ceil(columns * bits / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 [rows, in] codes < 2^bits -> uint8 [rows, ceil(in * bits / 8)].

    Code k of a row occupies bits [k*bits, (k+1)*bits) of the row's stream, least significant first,
    so 4-bit codes are two per byte (low nibble first) and 3-bit codes are 8 per 3 bytes.
    """
    if bits == 8:
        return codes.to(torch.uint8).clone()
    rows, columns = codes.shape
    shifts = torch.arange(bits, dtype=torch.uint8, device=codes.device)
    stream = ((codes.to(torch.uint8).unsqueeze(-1) >> shifts) & 1).reshape(rows, columns * bits)
    padding = packed_columns(columns, bits) * 8 - columns * bits
    stream = torch.nn.functional.pad(stream, (0, padding)).reshape(rows, -1, 8)
    weights = (1 << torch.arange(8, dtype=torch.int32, device=codes.device))
    return (stream.to(torch.int32) * weights).sum(dim=2).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, columns: int) -> torch.Tensor:
    """Inverse of ``pack_codes``: uint8 [rows, bytes] -> uint8 codes [rows, columns]."""
    if bits == 8:
        return packed
    rows = packed.shape[0]
    if 8 % bits == 0:  # 2 and 4 bits: whole codes per byte, so shifting bytes is enough (the fast path)
        shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
        codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(rows, -1)[:, :columns]
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    stream = ((packed.unsqueeze(-1) >> shifts) & 1).reshape(rows, -1)[:, : columns * bits]
    weights = (1 << torch.arange(bits, dtype=torch.int32, device=packed.device))
    return (stream.reshape(rows, columns, bits).to(torch.int32) * weights).sum(dim=2).to(torch.uint8)


# ---- error metrics ----


def relative_mse(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """||ref - approx||^2 / ||ref||^2 (0 for an exact copy)."""
    ref = reference.detach().double()
    signal = float(ref.square().sum())
    error = float((ref - approx.detach().double()).square().sum())
    return error / signal if signal > 0 else (0.0 if error == 0 else math.inf)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, 10·log10(||ref||^2 / ||ref - approx||^2), in dB."""
    mse = relative_mse(reference, approx)
    return math.inf if mse == 0 else -10 * math.log10(mse)
