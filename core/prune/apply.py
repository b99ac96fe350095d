"""Prune a causal LM in place: walk the decoder blocks' linear layers and apply the masks or SparseGPT.

Embeddings and ``lm_head`` are never selected, so they stay dense. Wanda and SparseGPT walk the blocks
with calibration data flowing through the already pruned ones (``core.calibration.walk``).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
from torch import nn

from core.calibration.hessian import HessianAccumulator, reconstruction_error
from core.calibration.observe import input_feature_norms
from core.calibration.walk import check_calibration, sequential_walk
from core.checks import require
from core.errors import SpecError
from core.layers import block_linear_layers, decoder_blocks, linear_layers, weight_matrix
from core.progress import CancelFn, ProgressFn
from core.prune.masks import global_magnitude_masks, nm_mask, row_mask, threshold_mask, unstructured_mask, wanda_scores
from core.prune.owl import outlier_share, owl_sparsities
from core.prune.sparsegpt import sparsegpt_prune
from core.prune.spec import PruneSpec

# Magnitude and Wanda use X^T X only for the reported output errors, so they fold in this many
# calibration tokens rather than all of them (computing it costs as much as the layer's forward).
REPORT_HESSIAN_TOKENS = 2048


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
    owl: dict | None = None  # OWL: each block's outlier share and the sparsity it got

    def as_dict(self) -> dict:
        return asdict(self)


def _keep_mask(spec: PruneSpec, weight: torch.Tensor, stats: HessianAccumulator | None,
               sparsity: float) -> torch.Tensor:
    """Magnitude or Wanda keep-mask for one float32 [out, in] weight at ``sparsity``."""
    if spec.threshold is not None:
        return threshold_mask(weight, spec.threshold)
    scores = wanda_scores(weight, stats.act_norm) if spec.method == "wanda" else weight.abs()
    if spec.nm is not None:
        return nm_mask(scores, *spec.nm)
    return row_mask(scores, sparsity) if spec.method == "wanda" else unstructured_mask(scores, sparsity)


def _solve_layer(spec: PruneSpec, masks: dict, sparsities: dict[str, float], name: str, layer: nn.Module,
                 stats: HessianAccumulator | None):
    weight = weight_matrix(layer)  # [out, in] view; Conv1D's transposed storage is written through it
    old = weight.detach().to(torch.float32, copy=True)
    sparsity = sparsities.get(name, spec.sparsity_for(name))
    if spec.method == "sparsegpt":
        n, m = spec.nm or (0, 0)
        new, _ = sparsegpt_prune(old, stats.hessian, sparsity, n, m, spec.blocksize, spec.percdamp)
    else:
        new = old * (masks[name] if name in masks else _keep_mask(spec, old, stats, sparsity))
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
    ``core.calibration.walk``). Magnitude needs no data; given some, it also reports output errors.
    A cancel leaves the model partially pruned: callers work on a copy (``prune`` makes one).
    """
    started = time.perf_counter()
    layers = check_layers(model, spec)
    if spec.method != "magnitude" and calibration is None:
        raise SpecError(f"{spec.method} needs calibration text: token ids [samples, seqlen] whose activations "
                        "rank the weights (a recipe's calibration: section); or use method magnitude, which needs none")
    calibration = check_calibration(calibration) if calibration is not None else None
    require(spec.budget is None, "a prune budget is planned before the run (core.recipe.budget, `squeezelab plan`);"
                                 " prune_ takes the planned spec, with its overrides")
    masks = {}
    if spec.scope == "global" and spec.threshold is None:
        masks = global_magnitude_masks({name: weight_matrix(layer) for name, layer in layers}, spec.sparsity)
    owl = owl_layer_sparsities(model, spec, calibration, on_progress, cancel) if spec.owl else None
    sparsities = owl["layers"] if owl else {}
    reports = sequential_walk(model, calibration, partial(_solve_layer, spec, masks, sparsities), spec.include,
                              spec.exclude,
                              stage=f"prune ({spec.method})",
                              max_hessian_tokens=None if spec.method == "sparsegpt" else REPORT_HESSIAN_TOKENS,
                              on_progress=on_progress, cancel=cancel)
    total = sum(math.prod(r.shape) for r in reports)
    zeros = sum(round(r.sparsity * math.prod(r.shape)) for r in reports)
    return PruneReport(spec.method, spec.pattern, zeros / total, reports, time.perf_counter() - started,
                       {key: value for key, value in owl.items() if key != "layers"} if owl else None)


def owl_layer_sparsities(model: nn.Module, spec: PruneSpec, calibration: torch.Tensor,
                         on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict:
    """OWL: each block's outlier share of Wanda scores on the dense model, and the sparsity of its layers.

    One forward over the calibration rows gathers every selected layer's input norms ||X_j|| (before any
    pruning, as the OWL paper does); returns {"lambda", "m", "shares", "blocks", "layers": {name: sparsity}}.
    """
    blocks_name, blocks = decoder_blocks(model)
    per_block = [list(linear_layers(block, spec.include, spec.exclude, prefix=f"{blocks_name}.{i}"))
                 for i, block in enumerate(blocks)]
    per_block = [layers for layers in per_block if layers]
    modules = [module for layers in per_block for _, module in layers]
    norms = iter(input_feature_norms(model, modules, calibration, "OWL", on_progress, cancel))
    shares = [outlier_share([wanda_scores(weight_matrix(module).float(), next(norms)) for _, module in layers],
                            spec.owl["m"]) for layers in per_block]
    try:
        block_sparsity = owl_sparsities(shares, spec.sparsity, spec.owl["lambda"])
    except ValueError as exc:
        raise SpecError(str(exc)) from exc
    layer_sparsity = {name: sparsity for layers, sparsity in zip(per_block, block_sparsity, strict=True)
                      for name, _ in layers}
    return {**spec.owl, "shares": shares, "blocks": block_sparsity, "layers": layer_sparsity}


def selected_layers(model: nn.Module, include: tuple[str, ...], exclude: tuple[str, ...]) -> list:
    layers = block_linear_layers(model, include, exclude)
    examples = ", ".join(name for name, _ in block_linear_layers(model)[:3])
    require(bool(layers), f"no linear layer in the decoder blocks matches include={list(include)} "
                           f"exclude={list(exclude)}; names look like {examples}")
    return layers


def check_layers(model: nn.Module, spec: PruneSpec) -> list[tuple[str, nn.Module]]:
    """The layers ``spec`` selects; refused before any work when there are none, or when an N:M pattern's M does
    not divide a layer's input width. Shapes only, so a meta-device model (no weights) will do."""
    layers = selected_layers(model, spec.include, spec.exclude)
    if spec.nm is None:
        return layers
    n, m = spec.nm
    widths = {name: weight_matrix(layer).shape[1] for name, layer in layers}
    bad = [name for name, width in widths.items() if width % m]
    if bad:
        fits = [k for k in range(2, 17) if all(width % k == 0 for width in widths.values())]
        raise SpecError(f"a {n}:{m} pattern groups {m} consecutive input columns, but {bad[0]} has "
                        f"{widths[bad[0]]} input columns, not a multiple of {m} ({len(bad)} such layer(s)); exclude "
                        f"them or pick an M that divides every selected layer ({', '.join(map(str, fits)) or 'none'})")
    return layers


def prune(model: nn.Module, spec: PruneSpec, calibration: torch.Tensor | None = None,
          on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> tuple[nn.Module, PruneReport]:
    """Like ``prune_`` on a deep copy: returns (pruned copy, report); ``model`` is left as it was."""
    pruned = copy.deepcopy(model)
    return pruned, prune_(pruned, spec, calibration, on_progress, cancel)
