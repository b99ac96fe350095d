"""What a recipe can be checked on before its model's weights are loaded and before a result row is written.

``check(recipe, base)`` runs at the top of ``core.recipe.pipeline.run``:

1. the model's ``config.json`` (no weights) becomes a model on the meta device (``core.models.device.meta_model``):
   every module and shape, no memory; an export of SqueezeLab's own form gets its packed layers back;
2. the steps are played on it in order, as far as shapes go: a quantize step swaps in empty packed layers of
   the planned schemes (group sizes checked layer by layer; a ``budget:`` step checks every option of its menu
   and that the budget is not below its lightest choice), a prune step checks the layers it selects (N:M
   widths), structured pruning and the layer-dropped / narrowed students rebuild the meta model from the changed
   config, and a model-reference student or teacher is read the same way (vocabulary checked);
3. the export section: its targets (folder, zip) and whether the format holds what the steps make;
4. every count against the text it reads and the memory that is free (``core.recipe.bounds``).

A refusal is the error the run itself would raise later (same checks, same messages), or a bound with its
numbers; either way nothing was loaded and no row was written.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.checks import require
from core.distill.spec import BUILT_IN_STUDENTS, HOLDOUT, DistillSpec
from core.distill.students import check_compatible, kept_layers
from core.export.export import precheck, space_needed
from core.export.files import check_free_space, check_target
from core.export.spec import ExportSpec
from core.layers import block_linear_layers, decoder_blocks, is_linear, weight_matrix
from core.models import files
from core.models.device import (
    ModelDims,
    check_memory,
    free_memory_bytes,
    meta_model,
    model_dims,
    pick_device,
    pick_dtype,
    tensor_bytes,
)
from core.models.exported import QUANT_METHOD
from core.models.loading import check_weight_format, hub_local_only, load_tokenizer, read_config
from core.models.source import LoadedModel, ModelSource, context_length, resolve
from core.plan.menu import parse_budget
from core.plan.planner import check_budget_fits
from core.plan.sizes import LayerShape, element_size, fixed_bytes
from core.prune.apply import check_layers
from core.prune.step import PruneStep
from core.prune.structured.apply import planned_changes
from core.prune.structured.spec import StructuredSpec
from core.prune.structured.surgery import apply_config
from core.quantize.apply import quantize_planned_
from core.quantize.qembedding import TiedQuantEmbedding, tie_quantized_embedding_
from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import QuantScheme
from core.quantize.spec import QuantizeSpec
from core.recipe import bounds
from core.recipe.recipe import Recipe


@dataclass
class Preflight:
    """What the checks found: the model as the steps will leave it (meta device) and the figures behind the bounds."""

    model: nn.Module
    calibration_tokens: int = 0  # samples x seqlen asked of the calibration text (0: no step reads it)
    evaluation_windows: int = 0  # windows the evaluation will score
    texts: dict[str, bounds.TextTokens] = field(default_factory=dict)


@dataclass
class _Plan:
    """The state of the checks while the steps are played on the meta model."""

    recipe: Recipe
    source: ModelSource
    tokenizer: Any
    dtype: torch.dtype
    device: torch.device
    base: nn.Module  # the recipe's model before any step (the teacher of a distill step)
    model: nn.Module  # the model as the steps so far leave it
    budget: bounds.Budget
    replay: list[QuantizeSpec] = field(default_factory=list)  # quantize steps to play again after a rebuild
    calibrated: list[tuple[ModelDims, bool]] = field(default_factory=list)  # (dims, walks the blocks) per reader
    recovery: list[tuple[int, ModelDims]] = field(default_factory=list)
    texts: dict[tuple[int, str], bounds.TextTokens] = field(default_factory=dict)

    def dims(self, model: nn.Module | None = None) -> ModelDims:
        """Working-memory sizes of ``model`` (default: the current one) at the base model's context."""
        return model_dims(model if model is not None else self.model, context_length(self.base.config))

    def tokens(self, tokenizer: Any, source: str, default: str, needed: int) -> bounds.TextTokens:
        key = (id(tokenizer), source if source.strip() != "default" else f"default:{default}")
        known = self.texts.get(key)
        if known is None or (not known.exact and known.tokens < bounds.ESTIMATE_MARGIN * needed):
            known = self.texts[key] = bounds.count_tokens(tokenizer, source, default, needed)
        return known


def check(recipe: Recipe, base: LoadedModel | None = None) -> Preflight:
    """Run every check that needs no weights; raises the run's own errors (exit code 2 on the command line).

    ``base``: the model a caller already holds (the app's cache); its config, tokenizer and packed layers
    stand for the recipe's model, and its weights are not counted again.
    """
    plan = _start(recipe, base)
    for step in recipe.steps:
        _play(plan, step.parsed)
    if recipe.export:
        _check_export(plan, ExportSpec.from_dict(recipe.export))
    return _check_counts(plan)


# ---- the model, from its config ----


def _start(recipe: Recipe, base: LoadedModel | None) -> _Plan:
    if base is not None:
        device, dtype, source, tokenizer = base.device, base.dtype, base.source, base.tokenizer
        meta = meta_model(base.model.config, dtype)
        _swap_packed(meta, *_packed_layout(base.model))
        held = 0  # already in memory
    else:
        source = resolve(recipe.model)
        device = pick_device(recipe.device)
        dtype = pick_dtype(device, recipe.dtype)
        meta, tokenizer = _read_model(source, dtype, **recipe.load_options)
        check_memory(tensor_bytes(meta), device, source.ref)
        held = tensor_bytes(meta)
    held += tensor_bytes(meta) if recipe.steps else 0  # the run's working copy
    budget = bounds.Budget(str(device), free_memory_bytes(device), bounds.FRAMEWORK_BYTES + held)
    return _Plan(recipe, source, tokenizer, dtype, device, meta, copy.deepcopy(meta), budget)


def _read_model(source: ModelSource, dtype: torch.dtype, allow_pickle: bool = False,
                trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    """(the model on the meta device, its tokenizer) from what a reference points at; no weights are read,
    only the files' headers checked, so a damaged file is refused before any row is written."""
    if source.kind in ("sample", "folder"):
        files.check_folder(Path(source.location))
    elif source.kind == "gguf":
        files.check_gguf(Path(source.location) / source.gguf_file)
    local_only = source.kind != "hub" or hub_local_only(source)
    config = read_config(source, trust_remote_code, local_only=local_only)
    raw = _raw_config(source)
    squeezelab = (raw.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD
    if not squeezelab and source.kind != "gguf":  # a .gguf file is its own weights
        check_weight_format(source, allow_pickle=allow_pickle)
    meta = meta_model(config, dtype)
    if squeezelab:
        qconfig = raw["quantization_config"]
        schemes = {name: QuantScheme(p["bits"], p.get("group_size"), p.get("symmetric", True))
                   for name, p in (qconfig.get("modules") or {}).items()}
        _swap_packed(meta, schemes, bool(qconfig.get("tied_embedding")))
    return meta, load_tokenizer(source, trust_remote_code, local_only=local_only)


def _raw_config(source: ModelSource) -> dict:
    path = Path(source.location) / "config.json"
    if source.kind not in ("sample", "folder") or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _packed_layout(model: nn.Module) -> tuple[dict[str, QuantScheme], bool]:
    """The scheme of every packed layer of a loaded model, and whether its embedding reads the packed head."""
    schemes = {name: m.scheme for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    return schemes, any(isinstance(m, TiedQuantEmbedding) for m in model.modules())


def _swap_packed(meta: nn.Module, schemes: dict[str, QuantScheme], tied: bool) -> None:
    """Give a meta model the packed layers a loaded (or exported) model has, as empty ``QuantLinear``s."""
    for name, scheme in schemes.items():
        old = meta.get_submodule(name)
        if not is_linear(old):
            continue
        out_features, in_features = weight_matrix(old).shape
        meta.set_submodule(name, QuantLinear(in_features, out_features, scheme, getattr(old, "bias", None) is not None,
                                             old.weight.dtype, "meta"))
    head = meta.get_output_embeddings()
    if tied and isinstance(head, QuantLinear):
        tie_quantized_embedding_(meta, head)


# ---- the steps, played on shapes ----


def _play(plan: _Plan, step: Any) -> None:
    if isinstance(step, QuantizeSpec):
        if step.needs_calibration:  # a budget's atlas walks the blocks like GPTQ
            plan.calibrated.append((plan.dims(), step.uses_gptq or step.budget is not None))
        _quantize_shapes(plan.model, step)
        plan.replay.append(step)
    elif isinstance(step, PruneStep):
        if step.spec.needs_calibration:
            plan.calibrated.append((plan.dims(), not isinstance(step.spec, StructuredSpec)))
        if step.recovery_steps:
            plan.recovery.append((step.recovery_steps, plan.dims()))
        if isinstance(step.spec, StructuredSpec):
            _rebuild(plan, planned_changes(plan.model, step.spec))
        else:
            check_layers(plan.model, step.spec)
            if step.spec.budget is not None:
                _check_budget(plan.model, step.spec.budget, "prune", step.spec)
    elif isinstance(step, DistillSpec):
        _play_distill(plan, step)


def _quantize_shapes(model: nn.Module, spec: QuantizeSpec) -> None:
    """``quantize_planned_``, or for a ``budget:`` step (whose per-layer choice needs the weights): every
    option of its menu checked on every layer, the budget against the menu's lightest choice, and the model
    left with every layer at the heaviest option (the bounds then err on the safe side). The run checks the
    planned recipe again once it is planned (``core.recipe.pipeline.run``)."""
    if spec.budget is None:
        quantize_planned_(model, spec)
        return
    _, menu = parse_budget(spec.budget, "quantize", spec.method, spec.group_size, spec.symmetric)
    _check_budget(model, spec.budget, "quantize", spec, spec.group_size, spec.symmetric)
    for option in menu.options:
        fixed = replace(spec, budget=None, bits=option.bits, group_size=option.group_size, symmetric=option.symmetric)
        quantize_planned_(copy.deepcopy(model) if option != menu.options[-1] else model, fixed)


def _check_budget(model: nn.Module, raw: dict, technique: str, spec: Any, group_size: int | None = None,
                  symmetric: bool = True) -> None:
    """A size or sparsity budget that even the menu's lightest choice exceeds, refused before loading (the
    layers are those ``core.recipe.budget`` plans: the selected linear layers of the blocks)."""
    budget, menu = parse_budget(raw, technique, spec.method, group_size, symmetric)
    shapes = [LayerShape(name, *weight_matrix(layer).shape)
              for name, layer in block_linear_layers(model, spec.include, spec.exclude)]
    check_budget_fits(shapes, menu, budget, fixed_bytes(model, [shape.name for shape in shapes]), element_size(model))


def _rebuild(plan: _Plan, changes: dict[str, Any]) -> None:
    """The model with a changed config: built again from it, with the quantize steps so far played again."""
    config = copy.deepcopy(plan.model.config)
    apply_config(config, changes)
    plan.model = meta_model(config, plan.dtype)
    for spec in plan.replay:
        _quantize_shapes(plan.model, spec)


def _play_distill(plan: _Plan, spec: DistillSpec) -> None:
    teacher, teacher_tokenizer = plan.base, plan.tokenizer
    if spec.teacher != "base":
        teacher, teacher_tokenizer = _reference(plan, spec.teacher)
    student_tokenizer = plan.tokenizer
    if spec.student == "layer_drop":
        total = len(decoder_blocks(plan.model)[1])
        keep = kept_layers(spec, total)
        drop = tuple(i for i in range(total) if i not in keep)
        _rebuild(plan, planned_changes(plan.model, StructuredSpec(target="layers", layers=drop)))
    elif spec.student == "width":
        _rebuild(plan, planned_changes(plan.model, StructuredSpec(target="mlp_channels", fraction=spec.width_fraction)))
    elif spec.student not in BUILT_IN_STUDENTS:
        plan.model, student_tokenizer = _reference(plan, spec.student)
        plan.replay = []
    with warnings.catch_warnings():  # "larger than its teacher" is the run's to say
        warnings.simplefilter("ignore")
        check_compatible(teacher, plan.model, teacher_tokenizer, student_tokenizer)
    _check_hidden_pairs(spec, plan.model, teacher)
    seqlen = min(spec.seqlen, context_length(teacher.config), context_length(plan.model.config))
    needed = (spec.batch_size + (spec.eval_windows if spec.eval_text == HOLDOUT else 0)) * seqlen
    default = plan.source.default_calibration_text
    text = plan.tokens(student_tokenizer, spec.text, default, needed)
    held_out = plan.tokens(student_tokenizer, spec.eval_text, default, seqlen) if spec.eval_text != HOLDOUT else None
    bounds.check_distill(spec, seqlen, plan.dims(), plan.dims(teacher), text, held_out, plan.budget)


def _reference(plan: _Plan, ref: str) -> tuple[nn.Module, Any]:
    """A model-reference student or teacher, read like the recipe's model (config, tokenizer; no weights)."""
    meta, tokenizer = _read_model(resolve(ref), plan.dtype, **plan.recipe.load_options)
    check_memory(tensor_bytes(meta), plan.device, ref)
    plan.budget.held += tensor_bytes(meta)
    return meta, tokenizer


def _check_hidden_pairs(spec: DistillSpec, student: nn.Module, teacher: nn.Module) -> None:
    if spec.hidden_weight <= 0 or not spec.hidden_layers:
        return
    n_s, n_t = len(decoder_blocks(student)[1]), len(decoder_blocks(teacher)[1])
    bad = [list(p) for p in spec.hidden_layers if p[0] >= n_s or p[1] >= n_t]
    require(not bad, f"hidden_layers {bad} name blocks that do not exist (student blocks 0..{n_s - 1}, "
                     f"teacher blocks 0..{n_t - 1})")


# ---- the export and the counts ----


def _check_export(plan: _Plan, spec: ExportSpec) -> None:
    precheck(plan.model, plan.tokenizer, spec)
    if spec.path:
        check_target(Path(spec.path), spec.overwrite, spec.zip)
        check_free_space(Path(spec.path), space_needed(tensor_bytes(plan.model), spec.zip))


def _check_counts(plan: _Plan) -> Preflight:
    recipe, source = plan.recipe, plan.source
    result = Preflight(plan.model)
    if plan.calibrated or plan.recovery:
        calibration = recipe.calibration
        seqlen = min(calibration.seqlen, context_length(plan.base.config))
        text = plan.tokens(plan.tokenizer, calibration.text, source.default_calibration_text,
                           calibration.samples * seqlen)
        for dims, walk in plan.calibrated or [(plan.dims(plan.base), False)]:
            result.calibration_tokens = bounds.check_calibration(calibration, seqlen, dims, text, plan.budget, walk)
        for steps, dims in plan.recovery:
            bounds.check_recovery(steps, seqlen, dims, plan.budget)
    evaluation = recipe.evaluation
    seqlen = evaluation.resolved_seqlen(context_length(plan.base.config))
    text = plan.tokens(plan.tokenizer, evaluation.text, source.default_text, seqlen)
    compare = bool(recipe.steps) and evaluation.compare_to_base
    result.evaluation_windows = bounds.check_evaluation(evaluation, plan.dims(), text, plan.budget, compare,
                                                        batch=8 if plan.device.type == "cuda" else 1)
    result.texts = {f"{source_name}": tokens for (_, source_name), tokens in plan.texts.items()}
    return result
