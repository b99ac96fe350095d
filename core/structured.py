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
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from core.errors import CancelledError, SpecError
from core.layers import Conv1D, decoder_blocks, linear_layers, param_count, weight_matrix

ProgressFn = Callable[[str, float], None]  # (stage name, fraction done in [0, 1])
CancelFn = Callable[[], bool]  # returns True when the caller wants the work stopped

TARGETS = ("mlp_channels", "heads", "layers")
IMPORTANCES = ("weight_norm", "activation_norm")
_SPEC_KEYS = ("method", "target", "fraction", "importance", "layers")
# Config fields holding one entry per decoder block; they follow the kept blocks.
_PER_LAYER_KEYS = ("layer_types", "no_rope_layers")
# (input-side projections, output-side projection, config keys that may hold the width)
_MLP_FAMILIES: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("gate_proj", "up_proj"), "down_proj", ("intermediate_size",)),  # Llama, Qwen2, Mistral
    (("fc1",), "fc2", ("ffn_dim", "intermediate_size")),  # OPT
    (("dense_h_to_4h",), "dense_4h_to_h", ("intermediate_size",)),  # GPT-NeoX
    (("mlp.c_fc",), "mlp.c_proj", ("n_inner", "intermediate_size")),  # GPT-2 (Conv1D, weight [in, out])
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


@dataclass(frozen=True)
class StructuredSpec:
    """Remove a ``fraction`` of the ``target`` units, the least important first; ``layers`` (target
    "layers" only) names blocks to drop instead. "activation_norm" needs calibration token ids."""

    target: str
    fraction: float | None = None  # share of units removed, in (0, 1); None only with `layers`
    importance: str = "weight_norm"
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        _require(self.target in TARGETS, f"target {self.target!r} is unknown; use one of {', '.join(TARGETS)}")
        _require(self.importance in IMPORTANCES,
                 f"importance {self.importance!r} is unknown; use one of {', '.join(IMPORTANCES)}")
        if self.layers is not None:
            self._check_layers()
        _require(self.fraction is not None or self.layers is not None,
                 f"target {self.target!r} needs a fraction in (0, 1), the share of units removed (e.g. 0.25)")
        if self.fraction is not None:
            ok = isinstance(self.fraction, int | float) and not isinstance(self.fraction, bool)
            _require(ok and 0.0 < self.fraction < 1.0,
                     f"fraction must be a number strictly between 0 and 1 (the share removed), got {self.fraction!r}")

    def _check_layers(self) -> None:
        _require(self.target == "layers",
                 f"layers=... names blocks to drop and only goes with target 'layers', not {self.target!r}")
        _require(self.fraction is None, "give either fraction or layers for target 'layers', not both")
        layers = self.layers
        ok = isinstance(layers, Sequence) and not isinstance(layers, str) and len(layers) > 0
        ok = ok and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
        _require(ok, f"layers must be a non-empty list of block indices (whole numbers from 0), got {layers!r}")
        _require(len(set(layers)) == len(layers), f"layers lists a block twice: {list(layers)}")
        object.__setattr__(self, "layers", tuple(sorted(layers)))

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> StructuredSpec:
        """From the recipe form ``{method: structured, target: ..., fraction: ...}``; unknown keys refused."""
        _require(isinstance(params, dict), f"structured pruning parameters must be a mapping, got {params!r}")
        unknown = sorted(set(params) - set(_SPEC_KEYS))
        _require(not unknown, f"unknown structured pruning key(s) {', '.join(map(str, unknown))}; "
                              f"allowed: {', '.join(_SPEC_KEYS)}")
        method = params.get("method", "structured")
        _require(method == "structured", f"method {method!r} is not structured pruning; use method: structured")
        _require("target" in params, f"structured pruning needs a target: one of {', '.join(TARGETS)}")
        layers = params.get("layers")
        return cls(target=params["target"], fraction=params.get("fraction"),
                   importance=params.get("importance", "weight_norm"),
                   layers=tuple(layers) if isinstance(layers, list) else layers)

    def to_dict(self) -> dict[str, Any]:
        """The recipe form (round-trips through ``from_dict``)."""
        data = {"method": "structured", **asdict(self)}
        if self.layers is not None:
            data["layers"] = list(self.layers)
        return {key: value for key, value in data.items() if value is not None}


@dataclass(frozen=True)
class StructuredReport:
    """What was removed, the parameter counts before and after, and what the config now says."""

    target: str
    importance: str
    removed: dict[int, tuple[int, ...]]  # block index -> removed channel / KV-group indices
    removed_layers: tuple[int, ...]  # blocks dropped (target "layers"), original indices
    params_before: int
    params_after: int
    config_changes: dict[str, Any] = field(default_factory=dict)  # config key -> new value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- math on tensors -------------------------------------------------------------------------


def removal_count(fraction: float, total: int) -> int:
    """Units to remove: ``fraction * total`` rounded half up, at least 1, at most ``total - 1``."""
    return min(total - 1, max(1, math.floor(fraction * total + 0.5)))


def lowest_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` lowest-scored indices of ``scores`` [n], ascending (ties: lower index first)."""
    return torch.argsort(scores, stable=True)[:count].sort().values


def channel_scores(inputs: Sequence[torch.Tensor], output: torch.Tensor) -> torch.Tensor:
    """Weight-norm score per MLP channel: ||its rows in ``inputs`` [c, h]|| * ||its column in ``output`` [h, c]||.

    A channel's contribution to the block output scales with both; either being zero makes it zero.
    """
    rows = torch.stack([w.detach().float().pow(2).sum(dim=1) for w in inputs]).sum(dim=0).sqrt()
    return rows * output.detach().float().norm(dim=0)


def group_scores(values: torch.Tensor, output: torch.Tensor, groups: int) -> torch.Tensor:
    """Weight-norm score per KV group: ||its v_proj rows|| * ||its o_proj columns||.

    ``values`` is v_proj's weight [groups * head_dim, h]; ``output`` is o_proj's [h, heads * head_dim].
    q/k only decide how a head mixes its values (softmax weights sum to one), so they cannot scale
    its output and are left out.
    """
    v = values.detach().float().reshape(groups, -1).norm(dim=1)
    o = output.detach().float().reshape(output.shape[0], groups, -1).permute(1, 0, 2).reshape(groups, -1)
    return v * o.norm(dim=1)


def group_activation_scores(input_norms: torch.Tensor, groups: int) -> torch.Tensor:
    """L2 norm per KV group of o_proj's input, from the norms of its features [heads * head_dim]."""
    return input_norms.pow(2).reshape(groups, -1).sum(dim=1).sqrt()


def residual_scores(delta_squares: torch.Tensor, input_squares: torch.Tensor) -> torch.Tensor:
    """Relative size of each block's residual update: ||out - in|| / ||in|| over calibration tokens."""
    return (delta_squares / input_squares.clamp_min(torch.finfo(torch.float32).tiny)).sqrt()


def evenly_spaced_middle(num_layers: int, count: int) -> tuple[int, ...]:
    """``count`` block indices spread evenly over 1 .. num_layers - 2 (never the first or the last)."""
    middle = list(range(1, num_layers - 1))
    _require(count <= len(middle),
             f"dropping {count} of {num_layers} blocks without calibration data would touch the first or the "
             f"last block; name the blocks with layers=[...] or pass calibration token ids to rank them")
    return tuple(middle[math.floor((i + 0.5) * len(middle) / count)] for i in range(count))


def _unit_rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of whole units (heads, groups) that are ``width`` rows each."""
    return (units[:, None] * width + torch.arange(width)).flatten()


def _complement(total: int, removed: torch.Tensor) -> torch.Tensor:
    keep = torch.ones(total, dtype=torch.bool)
    keep[removed.cpu()] = False
    return keep.nonzero().flatten()


# ---- module surgery --------------------------------------------------------------------------


def _slice_linear_(module: nn.Module, index: torch.Tensor, side: str) -> None:
    """Keep only the output (``side="out"``) or input (``"in"``) features listed in ``index``."""
    conv = bool(Conv1D) and isinstance(module, Conv1D)  # Conv1D's weight is [in, out]
    dim = (1 if conv else 0) if side == "out" else (0 if conv else 1)
    index = index.to(module.weight.device)
    grad = module.weight.requires_grad
    module.weight = nn.Parameter(module.weight.detach().index_select(dim, index).contiguous(), requires_grad=grad)
    if side == "out" and module.bias is not None:
        module.bias = nn.Parameter(module.bias.detach().index_select(0, index).contiguous(), requires_grad=grad)
    feature = ("nf" if conv else "out_features") if side == "out" else ("nx" if conv else "in_features")
    setattr(module, feature, int(index.numel()))


def _find_linear(block: nn.Module, name: str) -> nn.Module | None:
    return next((module for _, module in linear_layers(block, (name, f"*.{name}"))), None)


def _mlp_parts(block: nn.Module) -> tuple[list[nn.Module], nn.Module, tuple[str, ...]] | None:
    """(input-side projections, output-side projection, config keys for the width), if known."""
    for input_names, output_name, keys in _MLP_FAMILIES:
        inputs, output = [_find_linear(block, name) for name in input_names], _find_linear(block, output_name)
        if output is not None and None not in inputs:
            return inputs, output, keys
    return None


def _attention(block: nn.Module) -> nn.Module | None:
    """The block's attention module with separate q/k/v/o projections (Llama style), if any."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return next((m for m in block.modules() if all(isinstance(getattr(m, n, None), nn.Linear) for n in names)), None)


def _possible_targets(block: nn.Module) -> str:
    found = ["mlp_channels" if _mlp_parts(block) else "", "heads" if _attention(block) else "", "layers"]
    return ", ".join(t for t in found if t)


def _apply_config(config: Any, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        setattr(config, key, value)  # modules hold this same config object


def _validation_error(config: Any) -> str | None:
    try:
        if callable(getattr(config, "validate", None)):
            config.validate()
    except Exception as error:  # the config's own validators raise assorted types
        return str(error).strip().splitlines()[-1].strip()
    return None


def _config_refusal(config: Any, changes: dict[str, Any]) -> str | None:
    """Why the config class would refuse ``changes`` when the model is reloaded, or None.

    A config that already fails its own validation is not held against the change."""
    trial = copy.deepcopy(config)
    _apply_config(trial, changes)
    error = _validation_error(trial)
    return error if error is not None and _validation_error(config) is None else None


def _check_config(config: Any, changes: dict[str, Any], what: str) -> None:
    refusal = _config_refusal(config, changes)
    _require(refusal is None, f"{type(config).__name__} refuses {what} ({refusal}), so the result could not be "
                              f"reloaded; choose another fraction or target")


def _cut_blocks_(cuts: list[list[tuple[nn.Module, int, str]]], scores: list[torch.Tensor], count: int,
                 run: _Run) -> dict[int, tuple[int, ...]]:
    """In each block remove its ``count`` lowest-scored units from every (module, rows per unit, side)."""
    removed = {}
    for i, (block_cuts, score) in enumerate(zip(cuts, scores, strict=True)):
        drop = lowest_indices(score, count)
        keep = _complement(score.numel(), drop)
        for module, rows, side in block_cuts:
            _slice_linear_(module, _unit_rows(keep, rows), side)
        removed[i] = tuple(drop.tolist())
        run.progress("prune", (i + 1) / len(cuts))
    return removed


# ---- calibration -----------------------------------------------------------------------------


class _Run(NamedTuple):
    """What a target needs besides the spec: calibration ids [samples, seqlen], progress, cancel."""

    ids: torch.Tensor | None
    on_progress: ProgressFn | None
    cancel: CancelFn | None

    def progress(self, stage: str, done: float) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, min(1.0, done))


def _calibration_ids(calibration: torch.Tensor) -> torch.Tensor:
    ok = isinstance(calibration, torch.Tensor) and not calibration.is_floating_point() and calibration.numel() > 0
    _require(ok and calibration.dim() in (1, 2),
             "calibration must be token ids: a non-empty integer tensor shaped [seqlen] or [samples, seqlen]")
    return calibration.reshape(-1, calibration.shape[-1])


@torch.no_grad()
def _calibrate(model: nn.Module, handles: list, run: _Run) -> None:
    """Forward every calibration row in eval mode while ``handles`` (hooks) collect; then remove them."""
    device, ids, was_training = next(model.parameters()).device, run.ids, model.training
    batch = 8 if device.type == "cuda" else 1
    model.eval()
    try:
        for start in range(0, ids.shape[0], batch):
            if run.cancel is not None and run.cancel():
                raise CancelledError(f"structured pruning cancelled during calibration ({start} of "
                                     f"{ids.shape[0]} samples seen); the model is unchanged")
            model(input_ids=ids[start : start + batch].to(device), use_cache=False)
            run.progress("calibrate", (start + batch) / ids.shape[0])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def _input_norms(model: nn.Module, modules: list[nn.Module], run: _Run) -> list[torch.Tensor]:
    """Per-feature L2 norm of each module's input over all calibration tokens."""
    sums: dict[int, torch.Tensor] = {}

    def hook_for(i: int) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()  # [..., features]
            squares = x.pow(2).reshape(-1, x.shape[-1]).sum(dim=0).double().cpu()
            sums[i] = sums[i] + squares if i in sums else squares
        return hook

    _calibrate(model, [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)], run)
    return [sums[i].sqrt().float() for i in range(len(modules))]


def _block_residuals(model: nn.Module, blocks: nn.ModuleList, run: _Run) -> torch.Tensor:
    """``residual_scores`` of every block over the calibration tokens."""
    delta, inputs = torch.zeros(len(blocks), dtype=torch.float64), torch.zeros(len(blocks), dtype=torch.float64)

    def hook_for(i: int) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = (args[0] if args else kwargs["hidden_states"]).detach().float()
            h_out = (output[0] if isinstance(output, tuple) else output).detach().float()
            delta[i] += float((h_out - h_in).pow(2).sum())
            inputs[i] += float(h_in.pow(2).sum())
        return hook

    _calibrate(model, [b.register_forward_hook(hook_for(i), with_kwargs=True) for i, b in enumerate(blocks)], run)
    return residual_scores(delta, inputs)


# ---- targets ---------------------------------------------------------------------------------

_Outcome = tuple[dict[int, tuple[int, ...]], tuple[int, ...], dict[str, Any]]


def _width_key(config: Any, keys: tuple[str, ...], width: int) -> str:
    for key in keys:
        value = getattr(config, key, None)
        if value == width or (key == "n_inner" and value is None and width == 4 * config.hidden_size):
            return key
    raise SpecError(f"none of the config fields {', '.join(keys)} holds the MLP width {width}, so a model with "
                    f"fewer MLP channels could not be saved; try target 'layers'")


def _all_mlp_parts(model: nn.Module) -> list[tuple[list[nn.Module], nn.Module, tuple[str, ...]]]:
    """``_mlp_parts`` of every block; refused (naming what else works) when a block's MLP is unknown."""
    _, blocks = decoder_blocks(model)
    parts = [_mlp_parts(block) for block in blocks]
    _require(all(parts), f"no MLP projections known here in {type(blocks[0]).__name__}; possible targets "
                         f"for this model: {_possible_targets(blocks[0])}")
    return parts


def _prune_mlp_(model: nn.Module, spec: StructuredSpec, run: _Run) -> _Outcome:
    _, blocks = decoder_blocks(model)
    parts = _all_mlp_parts(model)
    widths = {weight_matrix(output).shape[1] for _, output, _ in parts}
    _require(len(widths) == 1, f"the blocks have different MLP widths {sorted(widths)}; a config holds one")
    width = widths.pop()
    count = removal_count(spec.fraction, width)
    changes = {_width_key(model.config, parts[0][2], width): width - count}
    _check_config(model.config, changes, f"an MLP width of {width - count}")
    if spec.importance == "activation_norm":  # the input of the down projection
        scores = _input_norms(model, [output for _, output, _ in parts], run)
    else:
        scores = [channel_scores([weight_matrix(m) for m in ins], weight_matrix(out)) for ins, out, _ in parts]
    cuts = [[(m, 1, "out") for m in ins] + [(out, 1, "in")] for ins, out, _ in parts]
    removed = _cut_blocks_(cuts, scores, count, run)
    for module in blocks.modules():  # e.g. LlamaMLP.intermediate_size (kept in step with the config)
        if isinstance(getattr(module, "intermediate_size", None), int):
            module.intermediate_size = width - count
    _apply_config(model.config, changes)
    return removed, (), changes


def _head_changes(config: Any, groups: int, count: int, head_dim: int) -> dict[str, Any]:
    """New head counts; refused, with the counts that would work, when the config class rejects them."""
    per_group = config.num_attention_heads // groups

    def changes(n: int) -> dict[str, Any]:
        return {"num_attention_heads": (groups - n) * per_group, "num_key_value_heads": groups - n,
                "head_dim": head_dim}

    refusal = _config_refusal(config, changes(count))
    if refusal is not None:
        fine = [n for n in range(1, groups) if _config_refusal(config, changes(n)) is None]
        hint = ", ".join(f"{n} (fraction {n / groups:.2f})" for n in fine) or "none"
        raise SpecError(f"removing {count} of {groups} KV groups leaves {changes(count)['num_attention_heads']} "
                        f"heads, which this config refuses ({refusal}); group counts it accepts: {hint}")
    return changes(count)


def _attentions(model: nn.Module) -> list[nn.Module]:
    """Every block's attention module; refused (naming what else works) when a block has none."""
    _, blocks = decoder_blocks(model)
    attns = [_attention(block) for block in blocks]
    _require(all(attns), f"{model.config.model_type} has no attention with separate q/k/v/o_proj linear layers: its "
                         f"head size is hidden_size / num_heads, so its config cannot describe fewer heads; "
                         f"possible targets for this model: {_possible_targets(blocks[0])}")
    return attns


def _kv_geometry(config: Any, attn: nn.Module) -> tuple[int, int, int]:
    """(KV groups, head size, query rows per group: also o_proj's input columns per group)."""
    groups = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    _require(groups > 1, "the model has a single KV head group; removing it would remove all attention "
                         "(try target 'mlp_channels' or 'layers')")
    head_dim = weight_matrix(attn.k_proj).shape[0] // groups
    return groups, head_dim, head_dim * config.num_attention_heads // groups


def _prune_heads_(model: nn.Module, spec: StructuredSpec, run: _Run) -> _Outcome:
    attns, config = _attentions(model), model.config
    groups, head_dim, q_rows = _kv_geometry(config, attns[0])
    changes = _head_changes(config, groups, removal_count(spec.fraction, groups), head_dim)
    if spec.importance == "activation_norm":  # o_proj's input: the heads' attention outputs
        scores = [group_activation_scores(n, groups) for n in _input_norms(model, [a.o_proj for a in attns], run)]
    else:
        scores = [group_scores(a.v_proj.weight, a.o_proj.weight, groups) for a in attns]
    cuts = [[(a.q_proj, q_rows, "out"), (a.k_proj, head_dim, "out"), (a.v_proj, head_dim, "out"),
             (a.o_proj, q_rows, "in")] for a in attns]
    removed = _cut_blocks_(cuts, scores, groups - changes["num_key_value_heads"], run)
    heads, kv_heads = changes["num_attention_heads"], changes["num_key_value_heads"]
    for attn in attns:  # forward reshapes use -1 and head_dim; repeat_kv reads num_key_value_groups
        attn.num_key_value_groups = heads // kv_heads
        for name, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
            if hasattr(attn, name):  # older or other Llama-style modules keep their own counts
                setattr(attn, name, value)
    _apply_config(config, changes)
    return removed, (), changes


def _check_named_layers(layers: tuple[int, ...], total: int) -> None:
    _require(layers[-1] < total, f"layers {list(layers)} name a block past the last one "
                                 f"(the model has blocks 0..{total - 1})")


def _layers_to_drop(model: nn.Module, blocks: nn.ModuleList, spec: StructuredSpec, run: _Run) -> tuple[int, ...]:
    total = len(blocks)
    if spec.layers is not None:
        _check_named_layers(spec.layers, total)
        _require(len(spec.layers) < total, f"layers {list(spec.layers)} would drop all {total} blocks")
        return spec.layers
    count = removal_count(spec.fraction, total)
    if run.ids is not None:
        return tuple(lowest_indices(_block_residuals(model, blocks, run), count).tolist())
    return evenly_spaced_middle(total, count)


def _prune_layers_(model: nn.Module, spec: StructuredSpec, run: _Run) -> _Outcome:
    _, blocks = decoder_blocks(model)
    config, total = model.config, len(blocks)
    drop = _layers_to_drop(model, blocks, spec, run)
    keep = [i for i in range(total) if i not in drop]
    moved = any(new != old for new, old in enumerate(keep))
    _require(not (moved and getattr(config, "scale_attn_by_inverse_layer_idx", False)),
             "this config scales attention by 1 / (block index + 1), so dropping a block would rescale every "
             "later one; drop only trailing blocks or use target 'mlp_channels'")
    changes: dict[str, Any] = {"num_hidden_layers": len(keep)}
    for key in _PER_LAYER_KEYS:
        values = getattr(config, key, None)
        if isinstance(values, list | tuple) and len(values) == total:
            changes[key] = [values[i] for i in keep]
    _check_config(config, changes, f"{len(keep)} blocks")
    for i in reversed(drop):
        del blocks[i]
    for new_index, block in enumerate(blocks):  # the KV cache is indexed by layer_idx
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    _apply_config(config, changes)
    run.progress("prune", 1.0)
    return {}, tuple(drop), changes


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
        parts = _all_mlp_parts(model)
        count = removal_count(spec.fraction, weight_matrix(parts[0][1]).shape[1])
        return sum(sum(_rows_cost(m, count, "out") for m in ins) + _rows_cost(out, count, "in")
                   for ins, out, _ in parts)
    attns = _attentions(model)
    groups, head_dim, q_rows = _kv_geometry(model.config, attns[0])
    count = removal_count(spec.fraction, groups)
    return sum(_rows_cost(a.q_proj, count * q_rows, "out") + _rows_cost(a.k_proj, count * head_dim, "out")
               + _rows_cost(a.v_proj, count * head_dim, "out") + _rows_cost(a.o_proj, count * q_rows, "in")
               for a in attns)


def prune_structured_(model: nn.Module, spec: StructuredSpec, calibration: torch.Tensor | None = None,
                      on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> StructuredReport:
    """Remove ``spec.target`` units from ``model`` in place and update its config; return what changed.

    ``calibration`` is token ids [samples, seqlen] (or [seqlen]); "activation_norm" needs it, and for
    target "layers" it ranks blocks by their residual update instead of picking evenly spaced middle
    ones. Cancelling (during calibration) leaves the model unchanged; the surgery itself is quick.
    """
    _require(not (spec.layers is None and spec.importance == "activation_norm" and calibration is None),
             "importance 'activation_norm' needs calibration token ids ([samples, seqlen]); pass calibration=... "
             "or use importance 'weight_norm'")
    ids = _calibration_ids(calibration) if calibration is not None else None
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
