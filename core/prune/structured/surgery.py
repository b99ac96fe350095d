"""Module surgery: cut units out of linear layers, find each family's MLP and attention, keep the config in step.

Every block loses the same number of units, because a config holds one intermediate size and one head
count for all blocks; a change the config class would refuse on reload is refused here first.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

import torch
from torch import nn

from core.architectures import FAMILIES, Mlp, family_of_block, part
from core.checks import require
from core.errors import SpecError
from core.layers import Conv1D, decoder_blocks, linear_layers, weight_matrix
from core.progress import ProgressFn, report
from core.prune.structured.scores import complement, lowest_indices, unit_rows

# Config fields holding one entry per decoder block; they follow the kept blocks.
PER_LAYER_KEYS = ("layer_types", "no_rope_layers")

class MlpParts(NamedTuple):
    """A block's MLP: input-side projections, the output-side one, the config keys that may hold its width;
    ``fused_halves``: the one input matrix is [gate; up] (Phi-3), so channel c is its rows c and width + c."""

    inputs: list[nn.Module]
    output: nn.Module
    width_keys: tuple[str, ...]
    fused_halves: bool = False


def _known_mlps() -> list[Mlp]:
    """The MLP layouts of ``core.architectures``' families, each once: tried by name on a block of a model
    outside those families (a custom model_type built like one of them)."""
    return list(dict.fromkeys(family.mlp for family in FAMILIES.values()))


def slice_linear_(module: nn.Module, index: torch.Tensor, side: str) -> None:
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


def find_linear(block: nn.Module, name: str) -> nn.Module | None:
    return next((module for _, module in linear_layers(block, (name, f"*.{name}"))), None)


def mlp_parts(block: nn.Module) -> MlpParts | None:
    """The block's MLP parts, from its family's facts (``core.architectures``), else by known names; None if unknown."""
    family = family_of_block(block)
    if family is not None:
        mlp = family.mlp
        inputs, output = [part(block, name) for name in mlp.inputs], part(block, mlp.output)
        if output is not None and None not in inputs:
            return MlpParts(inputs, output, mlp.width_keys, mlp.fused_halves)
    for known in _known_mlps():
        inputs, output = [find_linear(block, name) for name in known.inputs], find_linear(block, known.output)
        if output is not None and None not in inputs:
            return MlpParts(inputs, output, known.width_keys, known.fused_halves)
    return None


def fused_rows(keep: torch.Tensor, width: int) -> torch.Tensor:
    """Rows of a fused [gate; up] matrix that hold the kept channels ``keep`` of an MLP ``width`` wide."""
    return torch.cat([keep, keep + width])


def attention(block: nn.Module) -> nn.Module | None:
    """The block's attention module with separate q/k/v/o projections (Llama style), if any."""
    names = ("q_proj", "k_proj", "v_proj", "o_proj")
    return next((m for m in block.modules() if all(isinstance(getattr(m, n, None), nn.Linear) for n in names)), None)


def possible_targets(block: nn.Module) -> str:
    found = ["mlp_channels" if mlp_parts(block) else "", "heads" if attention(block) else "", "layers"]
    return ", ".join(t for t in found if t)


def apply_config(config: Any, changes: dict[str, Any]) -> None:
    for key, value in changes.items():
        setattr(config, key, value)  # modules hold this same config object


def _validation_error(config: Any) -> str | None:
    try:
        if callable(getattr(config, "validate", None)):
            config.validate()
    except Exception as error:  # the config's own validators raise assorted types
        return str(error).strip().splitlines()[-1].strip()
    return None


def config_refusal(config: Any, changes: dict[str, Any]) -> str | None:
    """Why the config class would refuse ``changes`` when the model is reloaded, or None.

    A config that already fails its own validation is not held against the change."""
    trial = copy.deepcopy(config)
    apply_config(trial, changes)
    error = _validation_error(trial)
    return error if error is not None and _validation_error(config) is None else None


def check_config(config: Any, changes: dict[str, Any], what: str) -> None:
    refusal = config_refusal(config, changes)
    require(refusal is None, f"{type(config).__name__} refuses {what} ({refusal}), so the result could not be "
                              f"reloaded; choose another fraction or target")


def cut_blocks_(cuts: list[list[tuple[nn.Module, int, str]]], scores: list[torch.Tensor], count: int,
                 on_progress: ProgressFn | None) -> dict[int, tuple[int, ...]]:
    """In each block remove its ``count`` lowest-scored units from every (module, rows per unit, side)."""
    removed = {}
    for i, (block_cuts, score) in enumerate(zip(cuts, scores, strict=True)):
        drop = lowest_indices(score, count)
        keep = complement(score.numel(), drop)
        for module, rows, side in block_cuts:
            if side == "halves":  # a fused [gate; up] matrix: the kept channels' rows in both halves
                slice_linear_(module, fused_rows(keep, score.numel()), "out")
            else:
                slice_linear_(module, unit_rows(keep, rows), side)
        removed[i] = tuple(drop.tolist())
        report(on_progress, "prune", (i + 1) / len(cuts))
    return removed


def width_key(config: Any, keys: tuple[str, ...], width: int) -> str:
    for key in keys:
        value = getattr(config, key, None)
        if value == width or (key == "n_inner" and value is None and width == 4 * config.hidden_size):
            return key
    raise SpecError(f"none of the config fields {', '.join(keys)} holds the MLP width {width}, so a model with "
                    f"fewer MLP channels could not be saved; try target 'layers'")


def all_mlp_parts(model: nn.Module) -> list[MlpParts]:
    """``mlp_parts`` of every block; refused (naming what else works) when a block's MLP is unknown."""
    _, blocks = decoder_blocks(model)
    parts = [mlp_parts(block) for block in blocks]
    require(all(parts), f"no MLP projections known here in {type(blocks[0]).__name__}; possible targets "
                         f"for this model: {possible_targets(blocks[0])}")
    return parts


def head_changes(config: Any, groups: int, count: int, head_dim: int) -> dict[str, Any]:
    """New head counts; refused, with the counts that would work, when the config class rejects them."""
    per_group = config.num_attention_heads // groups

    def changes(n: int) -> dict[str, Any]:
        return {"num_attention_heads": (groups - n) * per_group, "num_key_value_heads": groups - n,
                "head_dim": head_dim}

    refusal = config_refusal(config, changes(count))
    if refusal is not None:
        fine = [n for n in range(1, groups) if config_refusal(config, changes(n)) is None]
        hint = ", ".join(f"{n} (fraction {n / groups:.2f})" for n in fine) or "none"
        raise SpecError(f"removing {count} of {groups} KV groups leaves {changes(count)['num_attention_heads']} "
                        f"heads, which this config refuses ({refusal}); group counts it accepts: {hint}")
    return changes(count)


def attentions(model: nn.Module) -> list[nn.Module]:
    """Every block's attention module; refused (naming what else works) when a block has none."""
    _, blocks = decoder_blocks(model)
    attns = [attention(block) for block in blocks]
    require(all(attns), f"{model.config.model_type} has no attention with separate q/k/v/o_proj linear layers: its "
                         f"head size is hidden_size / num_heads, so its config cannot describe fewer heads; "
                         f"possible targets for this model: {possible_targets(blocks[0])}")
    return attns


def kv_geometry(config: Any, attn: nn.Module) -> tuple[int, int, int]:
    """(KV groups, head size, query rows per group: also o_proj's input columns per group)."""
    groups = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    require(groups > 1, "the model has a single KV head group; removing it would remove all attention "
                         "(try target 'mlp_channels' or 'layers')")
    head_dim = weight_matrix(attn.k_proj).shape[0] // groups
    return groups, head_dim, head_dim * config.num_attention_heads // groups
