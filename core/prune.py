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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn

from core.calibrate import (
    HessianAccumulator,
    check_calibration,
    drop_dead_inputs_,
    inverse_hessian_factor,
    reconstruction_error,
    sequential_walk,
)
from core.errors import SpecError
from core.evaluate import CancelFn, ProgressFn
from core.layers import block_linear_layers, weight_matrix
from core.params import checked_params, require

__all__ = [
    "HessianAccumulator", "LayerReport", "PruneReport", "PruneSpec",
    "nm_mask", "parse_pattern", "prune", "prune_", "reconstruction_error", "row_mask", "sparsegpt_prune",
    "threshold_mask", "unstructured_mask", "wanda_scores",
]

METHODS = ("magnitude", "wanda", "sparsegpt")
SCOPES = ("per-matrix", "global")
UNSTRUCTURED = "unstructured"
_NM_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
# Magnitude and Wanda use X^T X only for the reported output errors, so they fold in this many
# calibration tokens rather than all of them (computing it costs as much as the layer's forward).
REPORT_HESSIAN_TOKENS = 2048


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


_require = require


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
        values = checked_params(cls, params, "prune")
        _require("method" in values, f"a prune step needs a method: one of {', '.join(METHODS)}")
        return cls(**values)


# ---- masks and scores: pure functions on tensors. A keep-mask is True where the weight stays. ----


def fraction_count(fraction: float, total: int) -> int:
    """round(fraction * total): how many of ``total`` a fraction means."""
    return int(round(fraction * total))


def threshold_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep-mask, shape of ``weight``: |w| >= threshold (compared in float32, like ``ThresholdPreview``)."""
    return weight.detach().abs().float() >= threshold


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask, shape of ``scores``: drops exactly round(sparsity * numel) lowest scores of the whole tensor."""
    return _drop_lowest(scores.reshape(1, -1), fraction_count(sparsity, scores.numel())).reshape(scores.shape)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask for ``scores`` [out, in]: drops exactly round(sparsity * in) lowest scores in every row."""
    return _drop_lowest(scores, fraction_count(sparsity, scores.shape[1]))


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
    drop_dead_inputs_(w, h)
    u = inverse_hessian_factor(h, percdamp, "SparseGPT")
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        # per-block quotas whose totals add up to the exact overall sparsity
        quota = fraction_count(sparsity, rows * end) - fraction_count(sparsity, rows * start)
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


# ---- the layer walk ----


@dataclass(frozen=True)
class LayerReport:
    """One pruned matrix: its shape [out, in], fraction of zeros, and relative output error (None: no data).

    ``error_tokens`` is how many calibration tokens the error was measured on.
    """

    name: str
    shape: tuple[int, int]
    sparsity: float
    rel_error: float | None
    error_tokens: int = 0


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
    count = fraction_count(sparsity, flat.numel())
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
    measured = stats is not None and stats.hessian_tokens > 0
    error = reconstruction_error(old, new, stats.hessian) if measured else None
    return LayerReport(name, tuple(weight.shape), float((weight == 0).sum()) / weight.numel(), error,
                       stats.hessian_tokens if measured else 0)


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
    layers = selected_layers(model, spec.include, spec.exclude)
    if spec.method != "magnitude" and calibration is None:
        raise SpecError(f"{spec.method} needs calibration text: token ids [samples, seqlen] whose activations "
                        "rank the weights (a recipe's calibration: section); or use method magnitude, which needs none")
    calibration = check_calibration(calibration) if calibration is not None else None
    masks = _global_masks(layers, spec.sparsity) if spec.scope == "global" and spec.threshold is None else {}
    reports = sequential_walk(model, calibration, partial(_solve_layer, spec, masks), spec.include, spec.exclude,
                              stage=f"prune ({spec.method})",
                              max_hessian_tokens=None if spec.method == "sparsegpt" else REPORT_HESSIAN_TOKENS,
                              on_progress=on_progress, cancel=cancel)
    total = sum(math.prod(r.shape) for r in reports)
    zeros = sum(round(r.sparsity * math.prod(r.shape)) for r in reports)
    return PruneReport(spec.method, spec.pattern, zeros / total, reports, time.perf_counter() - started)


def selected_layers(model: nn.Module, include: tuple[str, ...], exclude: tuple[str, ...]) -> list:
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
