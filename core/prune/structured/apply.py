"""Structured pruning that really shrinks a causal LM: fewer MLP channels, attention heads or blocks.

The result is a smaller dense model of the same class with its config updated, so it saves with
``save_pretrained`` and reloads with ``AutoModelForCausalLM.from_pretrained`` to the same outputs.
Every block loses the same number of units, because a config holds one intermediate size and one
head count for all blocks. Counts are ``fraction * total`` rounded to the nearest whole unit (halves
up), at least one removed and at least one kept. Embeddings and ``lm_head`` are never touched.

Scores are pure tensor functions (``channel_scores``, ``group_scores``, ...), apart from the
calibration hooks that feed them and the module surgery.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from torch import nn

from core.calibration.observe import block_update_squares, calibration_rows, input_feature_norms
from core.checks import require
from core.layers import decoder_blocks, param_count, weight_matrix
from core.progress import CancelFn, ProgressFn, report
from core.prune.structured.scores import (
    channel_scores,
    evenly_spaced_middle,
    group_activation_scores,
    group_scores,
    lowest_indices,
    removal_count,
    residual_scores,
)
from core.prune.structured.spec import StructuredReport, StructuredSpec
from core.prune.structured.surgery import (
    PER_LAYER_KEYS,
    MlpParts,
    all_mlp_parts,
    apply_config,
    attentions,
    check_config,
    cut_blocks_,
    head_changes,
    kv_geometry,
    width_key,
)


class _Run(NamedTuple):
    """What a target needs besides the spec: calibration ids [samples, seqlen], progress, cancel."""

    ids: torch.Tensor | None
    on_progress: ProgressFn | None
    cancel: CancelFn | None

    def input_norms(self, model: nn.Module, modules: list[nn.Module]) -> list[torch.Tensor]:
        """Per-feature L2 norm of each module's input over the calibration tokens."""
        return input_feature_norms(model, modules, self.ids, "structured pruning", self.on_progress, self.cancel)

    def block_residuals(self, model: nn.Module, blocks: nn.ModuleList) -> torch.Tensor:
        """``residual_scores`` of every block over the calibration tokens."""
        squares = block_update_squares(model, blocks, self.ids, "structured pruning", self.on_progress, self.cancel)
        return residual_scores(*squares)


_Outcome = tuple[dict[int, tuple[int, ...]], tuple[int, ...], dict[str, Any]]


def _mlp_plan(model: nn.Module, spec: StructuredSpec) -> tuple[list, int, dict[str, Any]]:
    """(every block's MLP parts, channels removed per block, config changes), checked as the config would."""
    parts = all_mlp_parts(model)
    widths = {weight_matrix(mlp.output).shape[1] for mlp in parts}
    require(len(widths) == 1, f"the blocks have different MLP widths {sorted(widths)}; a config holds one")
    width = widths.pop()
    count = removal_count(spec.fraction, width)
    changes = {width_key(model.config, parts[0].width_keys, width): width - count}
    check_config(model.config, changes, f"an MLP width of {width - count}")
    return parts, count, changes


def _prune_mlp_(model: nn.Module, spec: StructuredSpec, run: _Run) -> _Outcome:
    _, blocks = decoder_blocks(model)
    parts, count, changes = _mlp_plan(model, spec)
    new_width = next(iter(changes.values()))
    if spec.importance == "activation_norm":  # the input of the down projection
        scores = run.input_norms(model, [mlp.output for mlp in parts])
    else:
        scores = [channel_scores(_input_rows(mlp), weight_matrix(mlp.output)) for mlp in parts]
    side = "halves" if parts[0].fused_halves else "out"
    cuts = [[(m, 1, side) for m in mlp.inputs] + [(mlp.output, 1, "in")] for mlp in parts]
    removed = cut_blocks_(cuts, scores, count, run.on_progress)
    for module in blocks.modules():  # e.g. LlamaMLP.intermediate_size (kept in step with the config)
        if isinstance(getattr(module, "intermediate_size", None), int):
            module.intermediate_size = new_width
    apply_config(model.config, changes)
    return removed, (), changes


def _input_rows(mlp: MlpParts) -> list[torch.Tensor]:
    """Each input-side matrix [width, hidden]; a fused [gate; up] one as its two halves."""
    weights = [weight_matrix(m) for m in mlp.inputs]
    return [half for w in weights for half in w.chunk(2, dim=0)] if mlp.fused_halves else weights


def _heads_plan(model: nn.Module, spec: StructuredSpec) -> tuple[list, int, int, int, dict[str, Any]]:
    """(attention modules, KV groups, head size, query rows per group, config changes), checked as the config would."""
    attns, config = attentions(model), model.config
    groups, head_dim, q_rows = kv_geometry(config, attns[0])
    return attns, groups, head_dim, q_rows, head_changes(config, groups, removal_count(spec.fraction, groups), head_dim)


def _prune_heads_(model: nn.Module, spec: StructuredSpec, run: _Run) -> _Outcome:
    attns, groups, head_dim, q_rows, changes = _heads_plan(model, spec)
    config = model.config
    if spec.importance == "activation_norm":  # o_proj's input: the heads' attention outputs
        scores = [group_activation_scores(n, groups) for n in run.input_norms(model, [a.o_proj for a in attns])]
    else:
        scores = [group_scores(a.v_proj.weight, a.o_proj.weight, groups) for a in attns]
    cuts = [[(a.q_proj, q_rows, "out"), (a.k_proj, head_dim, "out"), (a.v_proj, head_dim, "out"),
             (a.o_proj, q_rows, "in")] for a in attns]
    removed = cut_blocks_(cuts, scores, groups - changes["num_key_value_heads"], run.on_progress)
    heads, kv_heads = changes["num_attention_heads"], changes["num_key_value_heads"]
    for attn in attns:  # forward reshapes use -1 and head_dim; repeat_kv reads num_key_value_groups
        attn.num_key_value_groups = heads // kv_heads
        for name, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
            if hasattr(attn, name):  # older or other Llama-style modules keep their own counts
                setattr(attn, name, value)
    apply_config(config, changes)
    return removed, (), changes


def _check_named_layers(layers: tuple[int, ...], total: int) -> None:
    require(layers[-1] < total, f"layers {list(layers)} name a block past the last one "
                                 f"(the model has blocks 0..{total - 1})")


def _layers_to_drop(model: nn.Module, blocks: nn.ModuleList, spec: StructuredSpec, run: _Run) -> tuple[int, ...]:
    total = len(blocks)
    if spec.layers is not None:
        _check_named_layers(spec.layers, total)
        require(len(spec.layers) < total, f"layers {list(spec.layers)} would drop all {total} blocks")
        return spec.layers
    count = removal_count(spec.fraction, total)
    if run.ids is not None:
        return tuple(lowest_indices(run.block_residuals(model, blocks), count).tolist())
    return evenly_spaced_middle(total, count)


def _layer_changes(config: Any, total: int, drop: tuple[int, ...]) -> dict[str, Any]:
    """Config changes for dropping blocks ``drop`` of ``total``, checked as the config would."""
    keep = [i for i in range(total) if i not in drop]
    moved = any(new != old for new, old in enumerate(keep))
    require(not (moved and getattr(config, "scale_attn_by_inverse_layer_idx", False)),
            "this config scales attention by 1 / (block index + 1), so dropping a block would rescale every "
            "later one; drop only trailing blocks or use target 'mlp_channels'")
    changes: dict[str, Any] = {"num_hidden_layers": len(keep)}
    for key in PER_LAYER_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, list | tuple) and len(values) == total:
            changes[key] = [values[i] for i in keep]
    check_config(config, changes, f"{len(keep)} blocks")
    return changes


def _prune_layers_(model: nn.Module, spec: StructuredSpec, run: _Run) -> _Outcome:
    _, blocks = decoder_blocks(model)
    config, total = model.config, len(blocks)
    drop = _layers_to_drop(model, blocks, spec, run)
    changes = _layer_changes(config, total, drop)
    for i in reversed(drop):
        del blocks[i]
    for new_index, block in enumerate(blocks):  # the KV cache is indexed by layer_idx
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    apply_config(config, changes)
    report(run.on_progress, "prune", 1.0)
    return {}, tuple(drop), changes


def planned_changes(model: nn.Module, spec: StructuredSpec) -> dict[str, Any]:
    """The config changes ``spec`` would make to ``model``, refused where the run would refuse them.

    Shapes only, so a meta-device model (no weights) will do: a model built from the config with these
    changes has the pruned model's shapes. Blocks dropped by a ``fraction`` are counted as the run counts
    them (which ones depends on the calibration text; how many does not).
    """
    if spec.target == "mlp_channels":
        return _mlp_plan(model, spec)[2]
    if spec.target == "heads":
        return _heads_plan(model, spec)[4]
    _, blocks = decoder_blocks(model)
    drop = _layers_to_drop(model, blocks, spec, _Run(None, None, None))
    return _layer_changes(model.config, len(blocks), drop)


_HANDLERS = {"mlp_channels": _prune_mlp_, "heads": _prune_heads_, "layers": _prune_layers_}


def _rows_cost(module: nn.Module, rows: int, side: str) -> int:
    """Parameters in ``rows`` output rows (with their biases) or input columns of a linear layer."""
    out_features, in_features = weight_matrix(module).shape
    if side == "in":
        return rows * out_features
    return rows * (in_features + (1 if module.bias is not None else 0))


def params_removed(model: nn.Module, spec: StructuredSpec) -> int:
    """How many parameters ``spec`` would remove, from the module shapes alone: no data, no copy.

    Equals ``params_before - params_after`` of the real run (the units removed differ with the
    ranking, never their count). Dropping a ``fraction`` of blocks counts the average block, which is
    exact for models whose blocks are alike (every family supported here). Drives the size preview
    beside the structured-pruning slider; the spec is checked against the model as the run would.
    """
    _, blocks = decoder_blocks(model)
    if spec.target == "layers":
        if spec.layers is not None:
            _check_named_layers(spec.layers, len(blocks))
            return sum(param_count(blocks[i]) for i in spec.layers)
        return round(removal_count(spec.fraction, len(blocks)) * param_count(blocks) / len(blocks))
    if spec.target == "mlp_channels":
        parts = all_mlp_parts(model)
        count = removal_count(spec.fraction, weight_matrix(parts[0].output).shape[1])
        rows = 2 * count if parts[0].fused_halves else count
        return sum(sum(_rows_cost(m, rows, "out") for m in mlp.inputs) + _rows_cost(mlp.output, count, "in")
                   for mlp in parts)
    attns = attentions(model)
    groups, head_dim, q_rows = kv_geometry(model.config, attns[0])
    count = removal_count(spec.fraction, groups)
    return sum(_rows_cost(a.q_proj, count * q_rows, "out") + _rows_cost(a.k_proj, count * head_dim, "out")
               + _rows_cost(a.v_proj, count * head_dim, "out") + _rows_cost(a.o_proj, count * q_rows, "in")
               for a in attns)


def prune_structured_(model: nn.Module, spec: StructuredSpec, calibration: torch.Tensor | None = None,
                      on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> StructuredReport:
    """Remove ``spec.target`` units from ``model`` in place and update its config; return what changed.

    ``calibration`` is token ids [samples, seqlen] (or [seqlen]); "activation_norm" needs it, and for
    target "layers" it ranks blocks by their residual update instead of picking evenly spaced middle
    ones. Without an importance in ``spec`` the ranking is by activation norms when ``calibration`` is given,
    else by weight norms. Cancelling (during calibration) leaves the model unchanged; the surgery itself is quick.
    """
    spec = replace(spec, importance=spec.ranking(calibration is not None))
    require(not (spec.layers is None and spec.importance == "activation_norm" and calibration is None),
            "importance 'activation_norm' needs calibration token ids ([samples, seqlen]); pass calibration=... "
            "or use importance 'weight_norm'")
    ids = calibration_rows(calibration) if calibration is not None else None
    if spec.target != "layers" and spec.importance == "weight_norm":
        ids = None  # weight norms need no data
    before = param_count(model)
    removed, removed_layers, changes = _HANDLERS[spec.target](model, spec, _Run(ids, on_progress, cancel))
    return StructuredReport(target=spec.target, importance=spec.importance, removed=removed,
                            removed_layers=removed_layers, params_before=before,
                            params_after=param_count(model), config_changes=changes)


def prune_structured(model: nn.Module, spec: StructuredSpec, calibration: torch.Tensor | None = None,
                     on_progress: ProgressFn | None = None,
                     cancel: CancelFn | None = None) -> tuple[nn.Module, StructuredReport]:
    """Like ``prune_structured_`` on a deep copy: ``model`` is left untouched."""
    pruned = copy.deepcopy(model)
    return pruned, prune_structured_(pruned, spec, calibration, on_progress, cancel)
