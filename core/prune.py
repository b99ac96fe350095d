"""Unstructured and N:M (semi-structured) pruning: magnitude, Wanda and SparseGPT.

The math is plain tensor functions (masks, scores, the SparseGPT solve, the reconstruction error);
``prune_`` walks the decoder blocks' linear layers (``core.calibrate.sequential_walk``) and applies
them. Embeddings and ``lm_head`` are never selected, so they stay dense.

* magnitude - drop the smallest |w| (per matrix, globally, or below a fixed threshold); no data.
* wanda     - Sun et al. 2023: score |W_ij| * ||X_j||_2 and drop the lowest within each output row.
* sparsegpt - Frantar & Alistarh 2023: choose the mask block by block from w^2 / [H^-1]_jj^2 and
  update the remaining weights to compensate (optimal brain surgeon with H = 2 X^T X / N).
"""

from __future__ import annotations

import copy
import math
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from core.calibrate import (
    HessianAccumulator,
    check_calibration,
    model_device,
    reconstruction_error,
    sequential_walk,
)
from core.errors import CancelledError, SpecError
from core.evaluate import CancelFn, ProgressFn
from core.layers import block_linear_layers, weight_matrix

__all__ = [
    "HessianAccumulator", "LayerReport", "PruneReport", "PruneSpec", "ThresholdPreview", "finetune_masked_",
    "nm_mask", "parse_pattern", "prune", "prune_", "reconstruction_error", "row_mask", "sparsegpt_prune",
    "threshold_mask", "unstructured_mask", "wanda_scores",
]

METHODS = ("magnitude", "wanda", "sparsegpt")
SCOPES = ("per-matrix", "global")
UNSTRUCTURED = "unstructured"
_NM_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``None`` for "unstructured", ``(n, m)`` for "N:M" with 0 < N < M; SpecError otherwise."""
    match = _NM_PATTERN.match(pattern) if isinstance(pattern, str) else None
    if pattern == UNSTRUCTURED:
        return None
    _require(match is not None and 0 < int(match[1]) < int(match[2]),
             f"pattern {pattern!r} is not understood; use 'unstructured' or N:M with whole numbers 0 < N < M "
             "(keep N of every M consecutive weights), such as '2:4' or '4:8'")
    return int(match[1]), int(match[2])


def _patterns(value: object, name: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    _require(isinstance(items, list | tuple) and all(isinstance(p, str) and p for p in items),
             f"{name} must be a list of shell patterns over layer names (such as '*mlp*'), got {value!r}")
    return tuple(items)


@dataclass(frozen=True)
class PruneSpec:
    """What to prune and how; validated on creation.

    ``sparsity`` is the fraction of weights set to zero in each selected matrix (or across all of
    them with ``scope="global"``); an N:M pattern implies ``1 - N/M`` and fills it in.
    """

    method: str
    sparsity: float | None = None  # in [0, 1); exactly one of sparsity / threshold (unstructured)
    threshold: float | None = None  # magnitude only: zero every |w| below it, in every selected layer
    pattern: str = UNSTRUCTURED  # or "N:M": keep N of every M consecutive input weights (2:4 runs fast on GPUs)
    scope: str = "per-matrix"  # "global": one |w| cut across all selected layers (magnitude only)
    include: tuple[str, ...] = ("*",)  # shell patterns over qualified layer names
    exclude: tuple[str, ...] = ()
    blocksize: int = 128  # SparseGPT: columns solved together (lazy updates between blocks)
    percdamp: float = 0.01  # SparseGPT: damping added to H's diagonal, as a fraction of its mean

    def __post_init__(self) -> None:
        _require(self.method in METHODS,
                 f"prune method {self.method!r} is not known; choose one of {', '.join(METHODS)}")
        nm = parse_pattern(self.pattern)
        object.__setattr__(self, "include", _patterns(self.include, "include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "exclude"))
        self._check_amount(nm)
        _require(self.scope in SCOPES, f"scope {self.scope!r} is not known; use one of {', '.join(SCOPES)}")
        _require(self.scope == "per-matrix" or (self.method == "magnitude" and nm is None),
                 f"scope 'global' (one |w| cut across all layers) works only with method magnitude and pattern "
                 f"unstructured, got method {self.method!r}, pattern {self.pattern!r}; use scope 'per-matrix'")
        _require(isinstance(self.blocksize, int) and not isinstance(self.blocksize, bool) and self.blocksize >= 1,
                 f"blocksize must be a whole number >= 1 (128 is usual), got {self.blocksize!r}")
        _require(_is_number(self.percdamp) and self.percdamp >= 0,
                 f"percdamp must be a number >= 0 (0.01 is usual), got {self.percdamp!r}")

    def _check_amount(self, nm: tuple[int, int] | None) -> None:
        if self.threshold is not None:
            _require(self.method == "magnitude",
                     f"threshold={self.threshold!r} works only with method magnitude ({self.method} ranks weights "
                     "by data-aware scores, not |w|); give sparsity instead")
            _require(_is_number(self.threshold) and self.threshold >= 0,
                     f"threshold must be a number >= 0 (weights with smaller |w| are zeroed), got {self.threshold!r}")
            _require(nm is None and self.sparsity is None,
                     f"give one of threshold or sparsity/pattern, not both (got threshold={self.threshold!r}, "
                     f"sparsity={self.sparsity!r}, pattern={self.pattern!r})")
            object.__setattr__(self, "threshold", float(self.threshold))
            return
        if nm is not None:
            implied = 1.0 - nm[0] / nm[1]
            _require(self.sparsity is None or (_is_number(self.sparsity) and abs(self.sparsity - implied) < 1e-9),
                     f"pattern {self.pattern} implies sparsity {implied:g}, got sparsity={self.sparsity!r}; "
                     "leave sparsity out")
            object.__setattr__(self, "sparsity", implied)
            return
        _require(self.sparsity is not None, "give sparsity (a fraction in [0, 1)) or, for magnitude, a threshold")
        _require(_is_number(self.sparsity) and 0 <= self.sparsity < 1,
                 f"sparsity must be a number in [0, 1) (the fraction of weights set to zero), got {self.sparsity!r}; "
                 "1 would remove every weight")
        object.__setattr__(self, "sparsity", float(self.sparsity))

    @property
    def nm(self) -> tuple[int, int] | None:
        """(n, m) for an N:M pattern, else None."""
        return parse_pattern(self.pattern)

    def as_dict(self) -> dict:
        """The recipe form (lists for include/exclude); ``from_dict`` reads it back."""
        data = asdict(self)
        data.update(include=list(self.include), exclude=list(self.exclude))
        return data

    @classmethod
    def from_dict(cls, params: Mapping) -> PruneSpec:
        """Build from a recipe's ``prune:`` mapping, e.g. ``{method: wanda, sparsity: 0.5}``; unknown keys refused."""
        _require(isinstance(params, Mapping), f"prune parameters must be a mapping, got {params!r}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(allowed), key=str)
        _require(not unknown,
                 f"unknown prune parameter(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
        _require("method" in params, f"a prune step needs a method: one of {', '.join(METHODS)}")
        return cls(**params)


# ---- masks and scores: pure functions on tensors. A keep-mask is True where the weight stays. ----


def _count(fraction: float, total: int) -> int:
    return int(round(fraction * total))


def threshold_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep-mask, shape of ``weight``: |w| >= threshold (compared in float32, like ``ThresholdPreview``)."""
    return weight.detach().abs().float() >= threshold


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask, shape of ``scores``: drops exactly round(sparsity * numel) lowest scores of the whole tensor."""
    return _drop_lowest(scores.reshape(1, -1), _count(sparsity, scores.numel())).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask for ``scores`` [out, in]: drops exactly round(sparsity * in) lowest scores in every row."""
    return _drop_lowest(scores, _count(sparsity, scores.shape[1]))


def _drop_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask for ``scores`` [rows, cols] with the ``count`` lowest of each row dropped (ties by position)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if count > 0:
        lowest = torch.argsort(scores, dim=1, stable=True)[:, :count]
        keep.scatter_(1, lowest, False)
    return keep


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask for ``scores`` [out, in]: the ``n`` largest of every ``m`` consecutive columns in each row."""
    rows, cols = scores.shape
    if not 0 < n < m:
        raise SpecError(f"N:M needs 0 < N < M, got {n}:{m}")
    if cols % m:
        raise SpecError(f"an {n}:{m} pattern groups {m} consecutive input columns, but this matrix has {cols} "
                        f"input columns ({cols} is not a multiple of {m}); exclude the layer or pick an M dividing it")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """Wanda importance [out, in] = |W| [out, in] * ||X_j||_2 [in] (float32)."""
    return weight.detach().abs().float() * act_norm.to(weight.device, torch.float32)


# ---- SparseGPT ----


def _inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, attempts: int = 5) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp*I)^-1, so that U^T U = (H + damp*I)^-1; more damping if needed."""
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    mean_diag, damp = torch.diagonal(hessian).mean(), percdamp
    for attempt in range(attempts):
        tried = damp
        lower, info = torch.linalg.cholesky_ex(hessian + damp * mean_diag * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                if attempt:
                    warnings.warn(f"SparseGPT: the Hessian was not positive definite with percdamp={percdamp:g}; "
                                  f"solved with percdamp={damp:g} instead (more calibration data helps)", stacklevel=3)
                return upper
        damp = max(10 * damp, 0.01)
    raise ValueError(f"SparseGPT: the Hessian is not positive definite even with percdamp={tried:g}; "
                     "the calibration activations may hold NaN or inf")


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one matrix: (pruned weight [out, in] in ``weight``'s dtype, keep-mask [out, in]).

    ``hessian`` [in, in] ∝ X^T X. Columns are processed left to right in blocks of ``blocksize``;
    each block's mask is chosen from w^2 / [H^-1]_jj^2 on the weights as updated so far (for N:M,
    per group of ``m`` columns, keeping ``n``; ``sparsity`` is then ignored). Pruning a weight
    updates the not-yet-processed weights of its row (OBS); updates to later blocks are batched.
    Computes in float32 (float64 if ``weight`` is float64) on ``weight``'s device.
    """
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    w = weight.detach().to(dtype=dtype, copy=True)
    h = hessian.detach().to(w.device, dtype, copy=True)
    rows, cols = w.shape
    if n:
        nm_mask(w[:1], n, m)  # refuses a width that is not a multiple of m
        blocksize = max(m, blocksize // m * m)  # groups never straddle two blocks
    dead = torch.nonzero(torch.diagonal(h) == 0).squeeze(1)  # inputs that were always zero
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_hessian_factor(h, percdamp)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        quota = _count(sparsity, rows * end) - _count(sparsity, rows * start)  # totals add up to exact sparsity
        errors = _prune_block(w, u, pruned, start, end, quota, n, m)
        w[:, end:] -= errors @ u[start:end, end:]  # lazy update of every later column at once
    return w.to(weight.dtype), ~pruned


def _prune_block(w, u, pruned, start: int, end: int, quota: int, n: int, m: int) -> torch.Tensor:
    """Prune columns [start, end) of ``w`` in place; return the scaled errors [out, end - start]."""
    block, u_block = w[:, start:end], u[start:end, start:end]
    diag = torch.diagonal(u_block)
    errors = torch.zeros_like(block)
    if not n:
        scores = block.square() / diag.square()
        pruned[:, start:end] = ~_drop_lowest(scores.reshape(1, -1), quota).reshape(scores.shape)
    for j in range(end - start):
        if n and j % m == 0:
            group = block[:, j : j + m].square() / diag[j : j + m].square()
            pruned[:, start + j : start + j + m] = ~nm_mask(group, n, m)
        column = block[:, j]
        kept = column.masked_fill(pruned[:, start + j], 0.0)
        errors[:, j] = (column - kept) / diag[j]
        # OBS: move the error of column j onto columns j+1.. of this block (row-wise, shared H^-1)
        block[:, j + 1 :] -= errors[:, j : j + 1] * u_block[j : j + 1, j + 1 :]
        block[:, j] = kept
    return errors


# ---- threshold preview for a live slider ----


class ThresholdPreview:
    """Sorted |w| of each selected layer (float32, CPU), so sparsity at any threshold is a binary search."""

    def __init__(self, sorted_magnitudes: dict[str, torch.Tensor]) -> None:
        self.sorted = sorted_magnitudes
        self.total = sum(values.numel() for values in sorted_magnitudes.values())

    @classmethod
    @torch.no_grad()
    def from_model(cls, model: nn.Module, include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = ()):
        """Read every selected block linear layer once (see ``core.layers.block_linear_layers``)."""
        layers = _selected_layers(model, include, exclude)
        return cls({name: torch.sort(weight_matrix(layer).detach().abs().float().flatten().cpu()).values
                    for name, layer in layers})

    def sparsity_at(self, threshold: float) -> tuple[float, dict[str, float]]:
        """(overall, per layer) fraction of weights with |w| < threshold: what ``threshold_mask`` would zero."""
        probe = torch.tensor([threshold], dtype=torch.float32)
        below = {name: int(torch.searchsorted(values, probe)) for name, values in self.sorted.items()}
        per_layer = {name: count / self.sorted[name].numel() for name, count in below.items()}
        return sum(below.values()) / max(self.total, 1), per_layer

    def threshold_for(self, sparsity: float) -> float:
        """The smallest |w| with round(sparsity * total) weights below it (the global quantile; ties shift it).

        Bisects float32 bit patterns, which order like the values for |w| >= 0: ~31 rounds of searchsorted.
        """
        _require(0 <= sparsity < 1, f"sparsity must be in [0, 1), got {sparsity!r}")
        rank = _count(sparsity, self.total) + 1  # the answer is the rank-th smallest |w|
        low, high = 0, _float_bits(max(float(values[-1]) for values in self.sorted.values()))
        while low < high:
            middle = (low + high) // 2
            probe = torch.tensor([middle], dtype=torch.int32).view(torch.float32)
            at_most = sum(int(torch.searchsorted(values, probe, right=True)) for values in self.sorted.values())
            low, high = (low, middle) if at_most >= rank else (middle + 1, high)
        return float(torch.tensor([low], dtype=torch.int32).view(torch.float32))


def _float_bits(value: float) -> int:
    return int(torch.tensor([value], dtype=torch.float32).view(torch.int32))


# ---- the layer walk ----


@dataclass(frozen=True)
class LayerReport:
    """One pruned matrix: its shape [out, in], fraction of zeros, and relative output error (None: no data)."""

    name: str
    shape: tuple[int, int]
    sparsity: float
    rel_error: float | None


@dataclass(frozen=True)
class PruneReport:
    """What ``prune_`` did: overall sparsity over the selected layers and a row per layer."""

    method: str
    pattern: str
    sparsity: float
    layers: list[LayerReport]
    wall_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def _global_masks(layers: list[tuple[str, nn.Module]], sparsity: float) -> dict[str, torch.Tensor]:
    """Keep-masks dropping exactly round(sparsity * total) smallest |w| across all layers."""
    magnitudes = {name: weight_matrix(layer).detach().abs().float().contiguous() for name, layer in layers}
    flat = torch.cat([values.flatten() for values in magnitudes.values()])
    count = _count(sparsity, flat.numel())
    cut = flat.kthvalue(count).values if count else flat.new_tensor(-1.0)
    ties = count - int((flat < cut).sum())  # weights equal to the cut that must go too, taken in layer order
    masks = {}
    for name, values in magnitudes.items():
        drop = values < cut
        tied = torch.nonzero((values == cut).flatten()).squeeze(1)[:ties]
        drop.view(-1)[tied] = True
        ties -= tied.numel()
        masks[name] = ~drop
    return masks


def _keep_mask(spec: PruneSpec, weight: torch.Tensor, stats: HessianAccumulator | None) -> torch.Tensor:
    """Magnitude or Wanda keep-mask for one float32 [out, in] weight."""
    if spec.threshold is not None:
        return threshold_mask(weight, spec.threshold)
    scores = wanda_scores(weight, stats.act_norm) if spec.method == "wanda" else weight.abs()
    if spec.nm is not None:
        return nm_mask(scores, *spec.nm)
    return row_mask(scores, spec.sparsity) if spec.method == "wanda" else unstructured_mask(scores, spec.sparsity)


def _solve_layer(spec: PruneSpec, masks: dict, name: str, layer: nn.Module, stats: HessianAccumulator | None):
    weight = weight_matrix(layer)  # [out, in] view; Conv1D's transposed storage is written through it
    old = weight.detach().to(torch.float32, copy=True)
    if spec.method == "sparsegpt":
        n, m = spec.nm or (0, 0)
        new, _ = sparsegpt_prune(old, stats.hessian, spec.sparsity, n, m, spec.blocksize, spec.percdamp)
    else:
        new = old * (masks[name] if name in masks else _keep_mask(spec, old, stats))
    weight.copy_(new)
    error = reconstruction_error(old, new, stats.hessian) if stats is not None else None
    return LayerReport(name, tuple(weight.shape), float((weight == 0).sum()) / weight.numel(), error)


@torch.no_grad()
def prune_(
    model: nn.Module,
    spec: PruneSpec,
    calibration: torch.Tensor | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> PruneReport:
    """Prune ``model`` in place as ``spec`` says; calibration token ids [n, seqlen] feed wanda/sparsegpt.

    Blocks are pruned in order and the calibration data flows through the already pruned ones (see
    ``core.calibrate``). Magnitude needs no data; given some, it also reports output errors.
    A cancel leaves the model partially pruned: callers work on a copy (``prune`` makes one).
    """
    started = time.perf_counter()
    layers = _selected_layers(model, spec.include, spec.exclude)
    if spec.method != "magnitude" and calibration is None:
        raise SpecError(f"{spec.method} needs calibration text: token ids [samples, seqlen] whose activations "
                        "rank the weights (a recipe's calibration: section); or use method magnitude, which needs none")
    calibration = check_calibration(calibration) if calibration is not None else None
    masks = _global_masks(layers, spec.sparsity) if spec.scope == "global" and spec.threshold is None else {}
    reports = sequential_walk(model, calibration, partial(_solve_layer, spec, masks), spec.include, spec.exclude,
                              stage=f"prune ({spec.method})", on_progress=on_progress, cancel=cancel)
    total = sum(math.prod(r.shape) for r in reports)
    zeros = sum(round(r.sparsity * math.prod(r.shape)) for r in reports)
    return PruneReport(spec.method, spec.pattern, zeros / total, reports, time.perf_counter() - started)


def _selected_layers(model: nn.Module, include: tuple[str, ...], exclude: tuple[str, ...]) -> list:
    layers = block_linear_layers(model, include, exclude)
    examples = ", ".join(name for name, _ in block_linear_layers(model)[:3])
    _require(bool(layers), f"no linear layer in the decoder blocks matches include={list(include)} "
                           f"exclude={list(exclude)}; names look like {examples}")
    return layers


def prune(model: nn.Module, spec: PruneSpec, calibration: torch.Tensor | None = None,
          on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> tuple[nn.Module, PruneReport]:
    """Like ``prune_`` on a deep copy: returns (pruned copy, report); ``model`` is left as it was."""
    pruned = copy.deepcopy(model)
    return pruned, prune_(pruned, spec, calibration, on_progress, cancel)


# ---- recovery fine-tune with the sparsity pattern held fixed ----


def finetune_masked_(
    model: nn.Module,
    batches: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 8,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[float]:
    """AdamW on next-token loss over ``batches`` [n, seqlen] (``batch_size`` rows a step, cycling); in place.

    Zeros of the decoder blocks' linear weights stay zero: their gradients are masked and the mask is
    re-applied after every step. Returns the training loss of each step. ``cancel()`` is asked before
    each step and raises ``CancelledError`` (the model keeps the steps done, zeros intact).
    """
    masks = [(layer.weight, layer.weight.detach() != 0) for _, layer in block_linear_layers(model)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    device, was_training, losses = model_device(model), model.training, []
    model.train()
    try:
        for step in range(steps):
            if cancel is not None and cancel():
                raise CancelledError(f"fine-tuning stopped after {step} of {steps} steps; pruned weights stay zero")
            rows = torch.arange(step * batch_size, (step + 1) * batch_size) % batches.shape[0]
            batch = batches[rows].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for weight, keep in masks:
                    if weight.grad is not None:
                        weight.grad.mul_(keep)
                optimizer.step()
                for weight, keep in masks:
                    weight.mul_(keep)
            losses.append(float(loss.detach()))
            if on_progress is not None:
                on_progress("fine-tune", (step + 1) / steps)
    finally:
        model.train(was_training)
    return losses
