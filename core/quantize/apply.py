"""Quantize a causal LM in place: plan the layers, walk the blocks, swap in ``QuantLinear``, pick kernels.

``quantize_`` swaps every selected linear layer of the decoder blocks (and ``lm_head`` when asked)
for a ``QuantLinear`` holding packed codes, then picks the kernel each layer runs
(``core.quantize.kernel_choice``). The math is in ``scheme`` (RTN, packing) and ``gptq``; GPTQ walks
the blocks with calibration data flowing through the already quantized ones
(``core.calibration.walk.sequential_walk``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import nn

from core.architectures import family_of
from core.calibration.hessian import HessianAccumulator, reconstruction_error
from core.calibration.walk import check_calibration, sequential_walk
from core.checks import require
from core.errors import SpecError
from core.layers import block_linear_layers, decoder_blocks, is_linear, weight_matrix
from core.progress import CancelFn, ProgressFn
from core.quantize.awq import fold_block_
from core.quantize.fold import block_groups
from core.quantize.gptq import gptq_quantize
from core.quantize.kernel_choice import choose_kernels
from core.quantize.qembedding import embeddings_tied, tie_quantized_embedding_
from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import QuantizedMatrix, QuantScheme, relative_mse, rtn_quantize, sqnr_db
from core.quantize.smooth import smooth_, unsupported_reason

if TYPE_CHECKING:
    from core.quantize.spec import QuantizeSpec

CAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SMOOTH_WINDOWS = 16  # calibration windows whose activation ranges set the smoothing scales


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
        require(head is not None and is_linear(head), f"{type(model).__name__} has no linear lm_head to quantize")
        layers.append((_module_name(model, head), head))
    device_type = next(model.parameters()).device.type
    plan = [(name, layer, scheme) for name, layer in layers
            if (scheme := spec.scheme_for(name, device_type)) is not None]
    require(bool(plan), f"no layer to quantize: include={list(spec.include)} exclude={list(spec.exclude)} and the "
                         "overrides leave nothing; names look like "
                         + ", ".join(name for name, _ in block_linear_layers(model)[:3]))
    widths: dict[int | None, tuple[int, ...]] = {}
    for _, layer, scheme in plan:  # per group size, every input width it must divide: hints valid for all
        widths[scheme.group_size] = (*widths.get(scheme.group_size, ()), weight_matrix(layer).shape[1])
    for name, layer, scheme in plan:
        scheme.check_columns(weight_matrix(layer).shape[1], name, widths[scheme.group_size])
    return plan


def quantize_planned_(model: nn.Module, spec: QuantizeSpec) -> None:
    """Check ``spec`` against ``model`` as ``quantize_`` does, then swap in empty ``QuantLinear`` layers.

    Meant for a model on the meta device (built from its config, no weights): the result has the layer
    shapes, schemes and tied embedding a real run gives, so the checks that come after it (a later step,
    an export format) run before any weights are loaded. Nothing is read or computed.
    """
    if spec.method in CAST_DTYPES:
        model.to(CAST_DTYPES[spec.method])
        return
    plan = plan_layers(model, spec)
    reason = unsupported_reason(model) if spec.smooth is not None and spec.smooth_alpha > 0 else None
    if reason:
        raise SpecError(f"smooth={spec.smooth_alpha} cannot be applied: {reason}; set smooth: 0 to quantize without it")
    if spec.method == "awq":
        _awq_folder(model, spec, {})  # refuses a model its scales cannot fold into, as the run would
    tied = spec.lm_head and embeddings_tied(model)
    for name, layer, scheme in plan:
        out_features, in_features = weight_matrix(layer).shape
        weight = layer.weight
        model.set_submodule(name, QuantLinear(in_features, out_features, scheme, getattr(layer, "bias", None)
                                              is not None, weight.dtype, weight.device))
    head = model.get_output_embeddings() if tied else None
    if isinstance(head, QuantLinear):
        tie_quantized_embedding_(model, head)


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
    require(spec.budget is None, "a quantize budget is planned before the run (core.recipe.budget, `squeezelab "
                                 "plan`); quantize_ takes the planned spec, with its overrides")
    if (spec.uses_gptq or spec.method == "awq") and calibration is None:
        raise SpecError(f"{spec.method} needs calibration text: token ids [samples, seqlen] whose activations give "
                        "the Hessian (a recipe's calibration: section); or use method rtn, which needs none")
    calibration = check_calibration(calibration) if calibration is not None else None
    notes = _smooth_activations(model, spec, calibration, cancel)  # weights change, layers stay the same
    schemes = {name: scheme for name, _, scheme in plan}
    done: dict[str, QuantizedMatrix] = {}
    solve = partial(_quantize_layer, spec, schemes, done)
    block_names = {name for name, _ in block_linear_layers(model)}
    patterns = tuple(name for name in schemes if name in block_names)
    awq = _awq_folder(model, spec, schemes) if spec.method == "awq" else None
    reports = sequential_walk(model, calibration if spec.uses_gptq or awq else None, solve, patterns,
                              stage=f"quantize ({spec.method})", on_progress=on_progress, cancel=cancel, prepare=awq)
    if awq is not None:
        notes.append(awq.summary())
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
    reason = unsupported_reason(model)
    if reason is None and calibration is None:
        reason = "no calibration text"
    if reason:
        if explicit:
            raise SpecError(f"smooth={alpha} cannot be applied: {reason}; set smooth: 0 to quantize without it")
        return [f"activations not smoothed ({reason}): int8 activation ranges follow the raw outliers"]
    report = smooth_(model, calibration[:SMOOTH_WINDOWS], alpha, cancel)
    return [f"SmoothQuant alpha {alpha}: {report.layers} layers, worst channel range / median "
            f"{report.max_ratio_before:.0f}x -> {report.max_ratio_after:.0f}x "
            f"(ranges from {min(len(calibration), SMOOTH_WINDOWS)} calibration windows)"]


class _AwqFolder:
    """The walk's ``prepare``: AWQ scales searched and folded for each block before its layers are rounded."""

    def __init__(self, model: nn.Module, spec: QuantizeSpec, schemes: dict[str, QuantScheme]) -> None:
        self.blocks, self.schemes, self.grid = decoder_blocks(model)[1], schemes, spec.awq_grid
        self.family = family_of(model)
        self.searches: list = []

    def __call__(self, index: int, layers: list, stats: dict) -> None:
        names = {id(module): name for name, module in layers}
        groups = block_groups(self.blocks[index], self.family)
        self.searches += fold_block_(groups, lambda r: stats.get(names.get(id(r))),
                                     lambda r: self.schemes.get(names.get(id(r))), self.grid)

    def summary(self) -> str:
        scaled = [s for s in self.searches if s.ratio is not None]
        gain = sum(s.error for s in self.searches) / max(sum(s.unscaled_error for s in self.searches), 1e-30)
        return (f"AWQ: scales folded into {len(scaled)} of {len(self.searches)} groups of layers (ratios "
                f"{', '.join(sorted({f'{s.ratio:g}' for s in scaled})) or 'none'}); rounding error on the "
                f"calibration inputs {gain:.1%} of what unscaled rounding gives")


def _awq_folder(model: nn.Module, spec: QuantizeSpec, schemes: dict[str, QuantScheme]) -> _AwqFolder:
    reason = unsupported_reason(model)
    if reason:
        raise SpecError(f"awq folds its scales exactly into what produces each layer's input, and this model "
                        f"cannot take them: {reason}; use method gptq or rtn")
    return _AwqFolder(model, spec, schemes)


def _kernel_of(model: nn.Module, name: str) -> str:
    return model.get_submodule(name).kernel


def _cast(model: nn.Module, spec: QuantizeSpec, started: float) -> QuantReport:
    dtype = CAST_DTYPES[spec.method]
    model.to(dtype)
    note = f"whole model cast to {spec.method}; matmuls run in {spec.method} on {next(model.parameters()).device}"
    return QuantReport(spec.method, [], {f"dense {spec.method}": 1}, [note], time.perf_counter() - started)


def quantize(model: nn.Module, spec: QuantizeSpec, calibration: torch.Tensor | None = None,
             on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> tuple[nn.Module, QuantReport]:
    """Like ``quantize_`` on a deep copy: returns (quantized copy, report); ``model`` is left as it was."""
    quantized = copy.deepcopy(model)
    return quantized, quantize_(quantized, spec, calibration, on_progress, cancel)
