"""Build an atlas: walk the blocks once, solve every option of every layer, score it with only that layer changed.

The walk follows ``core.calibration.walk``: the calibration windows' hidden states enter each block
(dense: nothing is compressed on the way), one pass gathers the block's input statistics, and each
layer is solved under every option of the menu (``core.plan.compress``). The proxy cost comes from
those statistics and, before the walk, the loss's gradient on every layer's output over the first
``GRADIENT_WINDOWS`` calibration windows (``core.calibration.gradients``): ``core.plan.proxy.fisher_cost``.
In measured mode each solution is written into the layer, the model runs from that block on over the
held-out windows (``core.calibration.tail``), and ``core.evaluate.quality.score_batch``
gives delta NLL and KL(base || model) against the base logits; then the layer gets its weight back.
Beside the dense hidden states, one stream per option runs through blocks with *every* layer at that
option: at the end they give the uniform choices' delta NLL that calibrate predictions
(``core.plan.atlas``), in both modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from core.calibration.gradients import output_gradient_squares
from core.calibration.tail import logits_from_block
from core.calibration.walk import BlockInput, capture_block_inputs, collect_statistics
from core.evaluate.quality import score_batch
from core.layers import decoder_blocks, linear_layers, model_device, weight_matrix
from core.plan.atlas import Atlas
from core.plan.compress import compressed_weight
from core.plan.menu import Menu
from core.plan.proxy import fisher_cost, output_error
from core.plan.sizes import LayerShape, element_size, fixed_bytes
from core.progress import CancelFn, ProgressFn, check_cancel, report

GRADIENT_WINDOWS = 8  # calibration windows whose loss gradients weight the proxy (a backward pass each)


@dataclass
class _Heldout:
    """Held-out windows: their ids [n, seqlen], the base model's logits, and its NLL per token."""

    ids: torch.Tensor
    base_logits: list[torch.Tensor] = field(default_factory=list)
    base_nll: float = 0.0

    @classmethod
    @torch.no_grad()
    def of(cls, model: nn.Module, ids: torch.Tensor) -> _Heldout:
        device = model_device(model)
        logits = [model(input_ids=ids[i : i + 1].to(device), use_cache=False).logits for i in range(ids.shape[0])]
        scores = [score_batch(logit, ids[i : i + 1]) for i, logit in enumerate(logits)]
        return cls(ids, logits, sum(s.nll_sum for s in scores) / sum(s.count for s in scores))

    def score(self, model: nn.Module, index: int, inputs: list[BlockInput]) -> tuple[float, float]:
        """(delta NLL, KL) per token when block ``index`` receives ``inputs`` (one per window)."""
        nll = base = kl = count = 0.0
        for i, item in enumerate(inputs):
            ids = self.ids[i : i + 1]
            scored = score_batch(logits_from_block(model, index, item.hidden, ids), ids, self.base_logits[i])
            nll, base, kl, count = nll + scored.nll_sum, base + scored.base_nll_sum, kl + scored.kl_sum, \
                count + scored.count
        return (nll - base) / count, max(kl / count, 0.0)  # KL >= 0; float32 sums can miss by 1e-8


@dataclass
class _Walk:
    """What the walk carries from block to block, and what it fills in."""

    model: nn.Module
    menu: Menu
    measured: bool
    heldout: _Heldout
    calibration_inputs: list[BlockInput]
    heldout_inputs: list[BlockInput]
    uniform_inputs: list[list[BlockInput]]  # per option: the held-out windows through blocks all at that option
    grad_sq: dict[str, torch.Tensor] = field(default_factory=dict)  # per layer: E[(dNLL/dy_i)^2] [out]
    proxy: list[list[float]] = field(default_factory=list)
    output_error: list[list[float]] = field(default_factory=list)
    kl: list[list[float]] = field(default_factory=list)
    nll: list[list[float]] = field(default_factory=list)
    uniform_nll: list[float] = field(default_factory=list)
    uniform_kl: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"gradients_s": 0.0, "statistics_s": 0.0, "solve_s": 0.0,
                                                               "measure_s": 0.0})


def _timed(walk: _Walk, what: str, started: float) -> None:
    walk.timings[what] += time.perf_counter() - started


def _solve_block(walk: _Walk, index: int, layers: list[tuple[str, nn.Module]], done: int, total: int,
                 on_progress: ProgressFn | None, cancel: CancelFn | None) -> dict[str, list[torch.Tensor]]:
    """Every option of every layer of block ``index``: its proxy cost, its measured cost, its weight."""
    started = time.perf_counter()
    stats = collect_statistics(_block(walk.model, index), layers, walk.calibration_inputs)
    _timed(walk, "statistics_s", started)
    solved = {}
    for name, module in layers:
        check_cancel(cancel, f"atlas cancelled after {done} of {total} layers; nothing was cached")
        weight = weight_matrix(module)
        original = weight.detach().clone()
        started = time.perf_counter()
        variants = [compressed_weight(original, option, walk.menu.method, stats[name]) for option in walk.menu.options]
        hessian = stats[name].hessian
        walk.output_error.append([output_error(original.float(), v, hessian) for v in variants])
        walk.proxy.append([fisher_cost(original.float(), v, hessian, walk.grad_sq[name]) for v in variants])
        _timed(walk, "solve_s", started)
        if walk.measured:
            started = time.perf_counter()
            scores = []
            for variant in variants:
                weight.copy_(variant)
                scores.append(walk.heldout.score(walk.model, index, walk.heldout_inputs))
            weight.copy_(original)
            walk.nll.append([s[0] for s in scores])
            walk.kl.append([s[1] for s in scores])
            _timed(walk, "measure_s", started)
        solved[name] = variants
        done += 1
        report(on_progress, f"atlas ({'measured' if walk.measured else 'proxy'}): {name}", done / total)
    return solved


def _block(model: nn.Module, index: int) -> nn.Module:
    return decoder_blocks(model)[1][index]


def _advance(items: list[BlockInput], block: nn.Module) -> list[BlockInput]:
    return [item.advance(block) for item in items]


@torch.no_grad()
def _advance_uniform(walk: _Walk, index: int, layers: list[tuple[str, nn.Module]],
                     solved: dict[str, list[torch.Tensor]], last: bool) -> None:
    """Move each option's stream through block ``index`` with all its layers at that option (score it at the end)."""
    started = time.perf_counter()
    block = _block(walk.model, index)
    originals = {name: weight_matrix(module).detach().clone() for name, module in layers}
    for k in range(len(walk.menu.options)):
        for name, module in layers:
            weight_matrix(module).copy_(solved[name][k])
        if last:
            nll, kl = walk.heldout.score(walk.model, index, walk.uniform_inputs[k])
            walk.uniform_nll.append(nll)
            walk.uniform_kl.append(kl)
        else:
            walk.uniform_inputs[k] = _advance(walk.uniform_inputs[k], block)
    for name, module in layers:
        weight_matrix(module).copy_(originals[name])
    _timed(walk, "measure_s", started)


def _gradients(model: nn.Module, plan: list[list[tuple[str, nn.Module]]], ids: torch.Tensor, walk: _Walk,
               on_progress: ProgressFn | None, cancel: CancelFn | None) -> dict[str, torch.Tensor]:
    """E[(dNLL/dy)^2] per output feature of every planned layer (timed as the walk's ``gradients_s``)."""
    started = time.perf_counter()
    named = [(name, module) for block in plan for name, module in block]
    found = output_gradient_squares(model, [module for _, module in named], ids, "atlas", on_progress, cancel)
    _timed(walk, "gradients_s", started)
    return {name: squares for (name, _), squares in zip(named, found, strict=True)}


@torch.no_grad()
def build_atlas(model: nn.Module, model_ref: str, menu: Menu, calibration: torch.Tensor, heldout: torch.Tensor,
                measured: bool, include: tuple[str, ...] = ("*",), exclude: tuple[str, ...] = (),
                on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Atlas:
    """The atlas of ``model`` for ``menu``: statistics from ``calibration`` [n, seqlen], scores on ``heldout``.

    The model is left as it was (each layer gets its weight back, also on cancel or error).
    """
    started = time.perf_counter()
    blocks_name, blocks = decoder_blocks(model)
    plan = [list(linear_layers(block, include, exclude, prefix=f"{blocks_name}.{i}")) for i, block in enumerate(blocks)]
    layers = [LayerShape(name, *weight_matrix(module).shape) for block in plan for name, module in block]
    if not layers:
        raise ValueError(f"no linear layer matches include={list(include)} exclude={list(exclude)}")
    last = max(i for i, block in enumerate(plan) if block)
    was_training = model.training
    model.eval()
    try:
        heldout_data = _Heldout.of(model, heldout)
        heldout_inputs = capture_block_inputs(model, heldout)
        walk = _Walk(model, menu, measured, heldout_data, capture_block_inputs(model, calibration), heldout_inputs,
                     [list(heldout_inputs) for _ in menu.options])
        walk.grad_sq = _gradients(model, plan, calibration[:GRADIENT_WINDOWS], walk, on_progress, cancel)
        done = 0
        for index, block in enumerate(blocks[: last + 1]):
            if plan[index]:
                solved = _solve_block(walk, index, plan[index], done, len(layers), on_progress, cancel)
                done += len(plan[index])
                _advance_uniform(walk, index, plan[index], solved, index == last)
            elif index < last:
                walk.uniform_inputs = [_advance(items, block) for items in walk.uniform_inputs]
            if index < last:
                walk.calibration_inputs = _advance(walk.calibration_inputs, block)
                walk.heldout_inputs = _advance(walk.heldout_inputs, block)
    finally:
        model.train(was_training)
    timings = {**walk.timings, "total_s": time.perf_counter() - started}
    return Atlas(model_ref, menu, layers, np.array(walk.proxy), np.array(walk.kl) if measured else None,
                 np.array(walk.nll) if measured else None, walk.uniform_nll, walk.uniform_kl, heldout_data.base_nll,
                 fixed_bytes(model, [layer.name for layer in layers]), element_size(model),
                 settings={"include": list(include), "exclude": list(exclude), "heldout": int(heldout.shape[0]),
                           "seqlen": int(heldout.shape[1]), "calibration_windows": int(calibration.shape[0]),
                           "gradient_windows": min(GRADIENT_WINDOWS, int(calibration.shape[0]))},
                 timings=timings, output_error=np.array(walk.output_error))
