"""Weight quantization of a causal LM: RTN, GPTQ, dynamic int8, and fp16/bf16 casts.

``quantize_`` swaps every selected linear layer of the decoder blocks (and ``lm_head`` when asked)
for a ``core.qlinear.QuantLinear`` holding packed codes, then picks the kernel each layer runs.
The math is in ``core.quant_math``; GPTQ walks the blocks with calibration data flowing through the
already quantized ones (``core.calibrate.sequential_walk``).

* rtn          - round to nearest with min-max scales (per channel or per group); no data.
* gptq         - Frantar et al. 2022: quantize column by column and compensate with H^-1.
* int8_dynamic - 8-bit symmetric per-channel weights (codes within +-64 on the CPU, +-127 on CUDA; see
                 ``QuantizeSpec.scheme_on``), stored as int8, and int8
                 activations quantized per token at run time, on an integer matmul kernel (weights
                 rounded by RTN, or GPTQ with ``rounding: gptq``).
* fp16 / bf16  - the whole model cast to half precision (the simplest baseline).

Mixed precision: ``overrides`` give bits / group size / symmetry per layer-name pattern, or
``skip: true`` to keep a layer as it is; the first matching override wins.
"""

from __future__ import annotations

import copy
import fnmatch
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any

import torch
from torch import nn

from core import smooth
from core.calibrate import HessianAccumulator, check_calibration, reconstruction_error, sequential_walk
from core.errors import SpecError
from core.evaluate import CancelFn, ProgressFn
from core.layers import block_linear_layers, is_linear, weight_matrix
from core.params import checked_params, require
from core.qembedding import TiedQuantEmbedding, embeddings_tied, tie_quantized_embedding_
from core.qlinear import FBGEMM_SAFE_RADIUS, KERNELS, QuantLinear, kernel_unavailable
from core.quant_math import QuantizedMatrix, QuantScheme, gptq_quantize, relative_mse, rtn_quantize, sqnr_db

METHODS = ("rtn", "gptq", "int8_dynamic", "fp16", "bf16")
CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SMOOTH_DEFAULT_ALPHA = 0.5
SMOOTH_WINDOWS = 16  # calibration windows whose activation ranges set the smoothing scales
_OVERRIDE_KEYS = ("pattern", "bits", "group_size", "symmetric", "skip")


_require = require


@dataclass(frozen=True)
class Override:
    """Per-layer settings for layers whose name matches ``pattern`` (shell style, e.g. ``*.self_attn.*``)."""

    pattern: str
    bits: int | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    skip: bool = False

    @classmethod
    def from_dict(cls, raw: Any) -> Override:
        _require(isinstance(raw, Mapping) and "pattern" in raw,
                 f"an override is a mapping with a pattern, e.g. {{pattern: '*.mlp.*', bits: 4}}; got {raw!r}")
        unknown = sorted(set(raw) - set(_OVERRIDE_KEYS))
        _require(not unknown, f"unknown override key(s) {', '.join(unknown)}; allowed: {', '.join(_OVERRIDE_KEYS)}")
        _require(isinstance(raw["pattern"], str) and raw["pattern"], "an override's pattern must be a non-empty text")
        return cls(**raw)

    def scheme(self, base: QuantScheme) -> QuantScheme:
        """``base`` with this override's settings on top (validated)."""
        changes = {k: getattr(self, k) for k in ("bits", "symmetric") if getattr(self, k) is not None}
        if "group_size" in self.__dict__ and self.group_size is not None:
            changes["group_size"] = self.group_size or None  # 0 means per channel
        # a narrowed code grid belongs to the base's bits and kernel; other bits use their full range
        same_grid = changes.get("bits", base.bits) == base.bits and changes.get("symmetric", base.symmetric)
        return replace(base, **changes, code_radius=base.code_radius if same_grid else None)


@dataclass(frozen=True)
class QuantizeSpec:
    """What to quantize and how. ``group_size`` None (or 0) means one scale per output channel."""

    method: str = "rtn"
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = True
    # gptq: columns in order of decreasing H_jj, groups kept static (the stored layout is RTN's); on by
    # default as in llm-compressor: SmolLM2 4-bit g64 symmetric 42.33 -> 39.07 (BENCHMARKS section 5)
    act_order: bool = True
    blocksize: int = 128  # gptq: columns updated together
    percdamp: float = 0.01  # gptq: damping, as a fraction of mean(diag(H))
    kernel: str = "auto"  # auto | dequant | int8_weight_only | int4_weight_only | int8_dynamic
    lm_head: bool = False  # also quantize the output projection (RTN); a tied input embedding follows it
    rounding: str = "rtn"  # int8_dynamic only: how its int8 weights are rounded (rtn | gptq)
    # int8_dynamic only: SmoothQuant migration strength alpha (0 = off); None = 0.5 when there is
    # calibration text, off (with a note) when there is none
    smooth: float | None = None
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _require(self.method in METHODS, f"unknown quantization method {self.method!r}; choose one of "
                                         f"{', '.join(METHODS)}")
        if self.group_size == 0:
            object.__setattr__(self, "group_size", None)
        if self.method == "int8_dynamic":  # the kernel's weight format is fixed
            object.__setattr__(self, "bits", 8)
            object.__setattr__(self, "group_size", None)
            object.__setattr__(self, "symmetric", True)
        self.scheme  # noqa: B018 - validates bits / group size / symmetric
        _require(self.kernel == "auto" or self.kernel in KERNELS,
                 f"unknown kernel {self.kernel!r}; choose auto or one of {', '.join(KERNELS)}")
        _require(self.rounding in ("rtn", "gptq"), f"rounding must be rtn or gptq, got {self.rounding!r}")
        _require(self.smooth is None or (isinstance(self.smooth, int | float) and 0 <= self.smooth < 1),
                 f"smooth (SmoothQuant alpha) must be in [0, 1), e.g. 0.5, or 0 for off; got {self.smooth!r}")
        _require(isinstance(self.blocksize, int) and self.blocksize > 0,
                 f"blocksize must be a whole number > 0, got {self.blocksize!r}")
        _require(isinstance(self.percdamp, int | float) and 0 < self.percdamp < 1,
                 f"percdamp must be in (0, 1), e.g. 0.01; got {self.percdamp!r}")
        for name in ("include", "exclude"):
            value = getattr(self, name)
            value = (value,) if isinstance(value, str) else tuple(value)
            _require(all(isinstance(p, str) for p in value), f"{name} must be a list of name patterns")
            object.__setattr__(self, name, value)
        overrides = tuple(o if isinstance(o, Override) else Override.from_dict(o) for o in self.overrides)
        object.__setattr__(self, "overrides", overrides)
        for override in overrides:
            override.scheme(self.scheme)

    @property
    def scheme(self) -> QuantScheme:
        """The scheme for a CPU model (see ``scheme_on``)."""
        return self.scheme_on("cpu")

    def scheme_on(self, device_type: str) -> QuantScheme:
        """The scheme the kernels of ``device_type`` ("cpu", "cuda", ...) want.

        int8_dynamic on the CPU keeps weight codes within +-64 so fbgemm can quantize activations to 8
        bits, not 7 (SmolLM2, cpu-small: +7.0% -> +3.2% perplexity over fp32; BENCHMARKS section 5).
        CUDA's ``torch._int_mm`` accumulates in int32 without pair sums, so there the full +-127 grid
        keeps the extra bit. A CUDA-quantized model moved to the CPU stays correct: fbgemm then sees
        codes beyond 64 and falls back to 7-bit activations (``QuantLinear`` checks the codes).
        """
        radius = FBGEMM_SAFE_RADIUS if self.method == "int8_dynamic" and device_type != "cuda" else None
        return QuantScheme(self.bits, self.group_size, self.symmetric, radius)

    @property
    def uses_gptq(self) -> bool:
        return self.method == "gptq" or (self.method == "int8_dynamic" and self.rounding == "gptq")

    @property
    def smooth_alpha(self) -> float:
        """SmoothQuant strength this spec asks for (0: none)."""
        if self.method != "int8_dynamic":
            return 0.0
        return SMOOTH_DEFAULT_ALPHA if self.smooth is None else float(self.smooth)

    @property
    def uses_calibration(self) -> bool:
        return self.uses_gptq or self.smooth_alpha > 0

    def scheme_for(self, name: str, device_type: str = "cpu") -> QuantScheme | None:
        """The scheme of layer ``name`` on a ``device_type`` model (None: left as it is)."""
        base = self.scheme_on(device_type)
        for override in self.overrides:
            if fnmatch.fnmatch(name, override.pattern):
                return None if override.skip else override.scheme(base)
        return base

    def as_dict(self) -> dict:
        values = asdict(self)
        values["include"], values["exclude"] = list(self.include), list(self.exclude)
        values["overrides"] = [{k: v for k, v in asdict(o).items() if v is not None and v is not False}
                               for o in self.overrides]
        return values

    @classmethod
    def from_dict(cls, params: Mapping) -> QuantizeSpec:
        """Build from a recipe's ``quantize:`` mapping, e.g. ``{method: gptq, bits: 4, group_size: 64}``."""
        values = checked_params(cls, params, "quantize")
        values["overrides"] = tuple(values.get("overrides") or ())
        return cls(**values)


@dataclass(frozen=True)
class QuantLayerReport:
    """One quantized matrix: scheme, weight error, and output error on calibration data (None: no data)."""

    name: str
    shape: tuple[int, int]
    bits: int
    group_size: int | None
    symmetric: bool
    weight_rel_mse: float
    sqnr_db: float
    rel_error: float | None
    error_tokens: int
    kernel: str = "dequant"


@dataclass(frozen=True)
class QuantReport:
    """What ``quantize_`` did: the method, the layers, which kernels run, and the time it took."""

    method: str
    layers: list[QuantLayerReport]
    kernels: dict[str, int]
    notes: list[str]
    wall_s: float

    def as_dict(self) -> dict:
        return asdict(self)


# ---- the plan: which layer gets which scheme, checked before any work ----


def plan_layers(model: nn.Module, spec: QuantizeSpec) -> list[tuple[str, nn.Module, QuantScheme]]:
    """(name, layer, scheme) of every layer to quantize; bad group sizes are refused here, before work."""
    layers = block_linear_layers(model, spec.include, spec.exclude)
    if spec.lm_head:
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        _require(head is not None and is_linear(head), f"{type(model).__name__} has no linear lm_head to quantize")
        layers.append((_module_name(model, head), head))
    device_type = next(model.parameters()).device.type
    plan = [(name, layer, scheme) for name, layer in layers
            if (scheme := spec.scheme_for(name, device_type)) is not None]
    _require(bool(plan), f"no layer to quantize: include={list(spec.include)} exclude={list(spec.exclude)} and the "
                         "overrides leave nothing; names look like "
                         + ", ".join(name for name, _ in block_linear_layers(model)[:3]))
    for name, layer, scheme in plan:
        scheme.check_columns(weight_matrix(layer).shape[1], name)
    return plan


def _module_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


# ---- the walk ----


def _quantize_layer(spec: QuantizeSpec, schemes: dict[str, QuantScheme], done: dict[str, QuantizedMatrix],
                    name: str, layer: nn.Module, stats: HessianAccumulator | None) -> QuantLayerReport:
    """Quantize one layer's weight: the codes go to ``done``, the rounded values into the layer itself.

    Writing the dequantized values in place lets the calibration data flow through the quantized
    layer at dense speed; the packed QuantLinear replaces the layer once the walk is over.
    """
    scheme = schemes[name]
    weight = weight_matrix(layer)  # [out, in] view (Conv1D's transposed storage is written through it)
    old = weight.detach().to(torch.float32, copy=True).contiguous()  # GPT-2's Conv1D view is transposed
    measured = stats is not None and stats.hessian_tokens > 0
    if measured and spec.uses_gptq:
        matrix = gptq_quantize(old, stats.hessian, scheme, spec.blocksize, spec.percdamp, spec.act_order)
    else:
        matrix = rtn_quantize(old, scheme)
    # what is stored is fp16 scales: round them here too, so every figure describes the real layer
    matrix = QuantizedMatrix(matrix.codes, matrix.scale.half().float(), matrix.zero)
    done[name] = matrix
    new = matrix.dequantize()
    weight.copy_(new)
    return QuantLayerReport(
        name, tuple(old.shape), scheme.bits, scheme.group_size, scheme.symmetric, relative_mse(old, new),
        sqnr_db(old, new), reconstruction_error(old, new, stats.hessian) if measured else None,
        stats.hessian_tokens if measured else 0)


def _swap_in_quantized(model: nn.Module, schemes: dict[str, QuantScheme], done: dict[str, QuantizedMatrix]) -> None:
    """Replace each quantized layer by a QuantLinear holding its packed codes."""
    for name, matrix in done.items():
        layer = model.get_submodule(name)
        bias = layer.bias if getattr(layer, "bias", None) is not None else None
        model.set_submodule(name, QuantLinear.from_matrix(matrix, schemes[name], bias, layer.weight.dtype))


@torch.no_grad()
def quantize_(
    model: nn.Module,
    spec: QuantizeSpec,
    calibration: torch.Tensor | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> QuantReport:
    """Quantize ``model`` in place as ``spec`` says; calibration token ids [n, seqlen] feed GPTQ.

    A cancel leaves the model partially quantized: callers work on a copy (``quantize`` makes one).
    """
    started = time.perf_counter()
    if spec.method in CAST_DTYPES:
        return _cast(model, spec, started)
    plan = plan_layers(model, spec)
    if spec.uses_gptq and calibration is None:
        raise SpecError("gptq needs calibration text: token ids [samples, seqlen] whose activations give the "
                        "Hessian (a recipe's calibration: section); or use method rtn, which needs none")
    calibration = check_calibration(calibration) if calibration is not None else None
    notes = _smooth_activations(model, spec, calibration, cancel)  # weights change, layers stay the same
    schemes = {name: scheme for name, _, scheme in plan}
    done: dict[str, QuantizedMatrix] = {}
    solve = partial(_quantize_layer, spec, schemes, done)
    block_names = {name for name, _ in block_linear_layers(model)}
    patterns = tuple(name for name in schemes if name in block_names)
    reports = sequential_walk(model, calibration if spec.uses_gptq else None, solve, patterns,
                              stage=f"quantize ({spec.method})", on_progress=on_progress, cancel=cancel)
    for name, layer, _ in plan:
        if name not in block_names:  # lm_head: outside the blocks, always RTN
            reports.append(solve(name, layer, None))
    tied = spec.lm_head and embeddings_tied(model)  # checked before the swap replaces the shared tensor
    _swap_in_quantized(model, schemes, done)
    kernels, kernel_notes = choose_kernels(model, spec.kernel if spec.method != "int8_dynamic" else "int8_dynamic")
    notes += kernel_notes
    head = model.get_output_embeddings() if tied else None
    if isinstance(head, QuantLinear) and tie_quantized_embedding_(model, head):
        notes.append("the input embedding is tied to lm_head: it reads the same quantized rows (stored once)")
    reports = [replace(r, kernel=_kernel_of(model, r.name)) for r in reports]
    return QuantReport(spec.method, reports, kernels, notes, time.perf_counter() - started)


def _smooth_activations(model: nn.Module, spec: QuantizeSpec, calibration: torch.Tensor | None,
                        cancel: CancelFn | None) -> list[str]:
    """SmoothQuant before int8 activations, when asked and possible; notes say what happened."""
    alpha = spec.smooth_alpha
    if alpha == 0:
        return []
    explicit = spec.smooth is not None
    reason = smooth.unsupported_reason(model)
    if reason is None and calibration is None:
        reason = "no calibration text"
    if reason:
        if explicit:
            raise SpecError(f"smooth={alpha} cannot be applied: {reason}; set smooth: 0 to quantize without it")
        return [f"activations not smoothed ({reason}): int8 activation ranges follow the raw outliers"]
    report = smooth.smooth_(model, calibration[:SMOOTH_WINDOWS], alpha, cancel)
    return [f"SmoothQuant alpha {alpha}: {report.layers} layers, worst channel range / median "
            f"{report.max_ratio_before:.0f}x -> {report.max_ratio_after:.0f}x "
            f"(ranges from {min(len(calibration), SMOOTH_WINDOWS)} calibration windows)"]


def _kernel_of(model: nn.Module, name: str) -> str:
    return model.get_submodule(name).kernel


def _cast(model: nn.Module, spec: QuantizeSpec, started: float) -> QuantReport:
    dtype = CAST_DTYPES[spec.method]
    model.to(dtype)
    note = f"whole model cast to {spec.method}; matmuls run in {spec.method} on {next(model.parameters()).device}"
    return QuantReport(spec.method, [], {f"dense {spec.method}": 1}, [note], time.perf_counter() - started)


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
        reason = kernel_unavailable(kernel, module.scheme, module.in_features, module.scales.device)
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
        if kernel_unavailable(kernel, module.scheme, module.in_features, device) is None:
            return kernel
    return "dequant"


def quantize(model: nn.Module, spec: QuantizeSpec, calibration: torch.Tensor | None = None,
             on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> tuple[nn.Module, QuantReport]:
    """Like ``quantize_`` on a deep copy: returns (quantized copy, report); ``model`` is left as it was."""
    quantized = copy.deepcopy(model)
    return quantized, quantize_(quantized, spec, calibration, on_progress, cancel)


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
