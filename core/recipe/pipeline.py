"""Recipe -> copy of the base model -> steps -> evaluation -> (export) -> result row.

The base model is never mutated: steps work on ``clone(base)``. A run is recorded in the store
before any work starts, so a crash leaves a failed row, never a missing one. With an ``export:``
section the compressed model is written (``core.export``), reloaded and checked, and the row's
``size_bytes`` is the artifact's size on disk.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core import data
from core.evaluate.measurement import Measurement, kernel_label, measure
from core.export.export import export_model
from core.export.files import check_target
from core.export.spec import ExportResult, ExportSpec
from core.models.device import pick_device, pick_dtype
from core.models.loading import clone, load
from core.models.source import LoadedModel, resolve
from core.progress import CancelFn, ProgressFn, report
from core.quantize.qlinear import QuantLinear
from core.recipe import preflight
from core.recipe.budget import needs_planning, resolve_budgets
from core.recipe.recipe import Recipe
from core.recipe.texts import text_notes
from core.store import ResultRow, ResultStore
from core.technique import StepContext


def step_context(recipe: Recipe, loaded: LoadedModel, on_progress: ProgressFn | None,
                 cancel: CancelFn | None) -> StepContext:
    """Calibration settings for the recipe's steps; windows never exceed the model's context."""
    calibration = recipe.calibration
    seqlen = min(calibration.seqlen, loaded.context_length)
    context = StepContext(
        tokenizer=loaded.tokenizer, default_text=loaded.source.default_calibration_text,
        calibration_text=calibration.text,
        samples=calibration.samples, seqlen=seqlen, seed=calibration.seed, on_progress=on_progress, cancel=cancel,
        load_options=recipe.load_options,
    )
    if seqlen < calibration.seqlen:
        context.notes.append(f"calibration seqlen {calibration.seqlen} cut to the model's context, {seqlen}")
    context.notes.extend(text_notes(recipe, loaded.source))
    return context


def apply_steps(recipe: Recipe, model: torch.nn.Module, context: StepContext) -> tuple[torch.nn.Module, list[dict]]:
    """Apply the recipe's steps to ``model`` (the run's own copy) in order: (the final model, each step's report).

    A step that returns although ``context.cancel()`` is set stopped early and kept its work (a distillation
    keeps its best weights, a recovery fine-tune the steps done): the steps after it do not run.
    """
    reports = []
    for index, step in enumerate(recipe.steps):
        reports.append(step.parsed.apply(model, context))
        model = context.take_model(model)  # a distill step may hand over another (student) model
        if context.cancel is not None and context.cancel():
            skipped = [getattr(later.parsed, "label", later.kind) for later in recipe.steps[index + 1:]]
            context.notes.append(f"cancelled during step {index + 1} ({reports[-1].get('label', step.kind)}); the "
                                 "model was evaluated as that step left it"
                                 + (f"; not run: {', '.join(skipped)}" if skipped else ""))
            break
    return model, reports


def known_risks(recipe: Recipe) -> list[str]:
    """The recipe's settings known to collapse a model (a step's ``known_risk``), to say before it runs."""
    return [f"step {index + 1} ({step.kind}): {risk}" for index, step in enumerate(recipe.steps)
            if (risk := getattr(step.parsed, "known_risk", None))]


def check_before_start(recipe: Recipe, base: LoadedModel | None = None) -> ExportSpec | None:
    """Everything that can be checked without loading weights, before any row is written; the export spec."""
    resolve(recipe.model)
    pick_dtype(pick_device(recipe.device), recipe.dtype)
    data.check_source(recipe.evaluation.text)
    data.check_source(recipe.calibration.text)
    export_spec = ExportSpec.from_dict(recipe.export) if recipe.export else None
    if export_spec is not None and export_spec.path:
        check_target(Path(export_spec.path), export_spec.overwrite)
    preflight.check(recipe, base)  # the model's config, its steps on shapes, every count: before any load or row
    return export_spec


def run(
    recipe: Recipe,
    store: ResultStore,
    base: LoadedModel | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    abort: CancelFn | None = None,
    sweep: str | None = None,
    sweep_params: str | None = None,
) -> ResultRow:
    """Run a recipe end to end, record it in ``store`` and return its result row.

    ``base`` lets a caller that already holds the loaded model (the app's cache) skip loading; it is
    never modified: steps run on a deep copy, and a distill step uses it as its (frozen) teacher.
    ``on_step`` receives every training step's record (loss terms, learning rate, perplexity) live.
    ``cancel()`` stops the run with ``CancelledError`` (a cancelled row, no metrics), unless a step stops
    gracefully (distillation, a recovery fine-tune): then later steps are skipped, the model is evaluated as
    it stands (``abort()``, a second cancel, may stop that too), not exported, and stored as "cancelled".
    ``sweep`` / ``sweep_params`` (JSON text) tag the row as a trial of a sweep (``core.sweep``).
    """
    export_spec = check_before_start(recipe, base)
    started = time.perf_counter()
    if needs_planning(recipe):  # the row records the planned recipe, which reruns without planning
        base = base or load(recipe.model, device=recipe.device, dtype=recipe.dtype, **recipe.load_options)
        recipe = resolve_budgets(recipe, base, step_context(recipe, base, on_progress, cancel), store.root)
        preflight.check(recipe, base)  # the planned schemes, layer by layer, and the export of what they make
    with store.run(recipe.model, recipe.to_yaml(), device=recipe.device, sweep=sweep,
                   sweep_params=sweep_params) as run_id:
        report(on_progress, "load", 0.0)
        loaded = base or load(recipe.model, device=recipe.device, dtype=recipe.dtype, **recipe.load_options)
        model = clone(loaded.model) if recipe.steps else loaded.model
        context = step_context(recipe, loaded, on_progress, cancel)
        context.teacher, context.on_step = loaded.model, on_step
        model, reports = apply_steps(recipe, model, context)
        stopped = bool(recipe.steps) and cancel is not None and cancel()  # a step stopped early, keeping its work
        reference = loaded.model if recipe.steps and recipe.evaluation.compare_to_base else None
        measured = measure(model, loaded, recipe.evaluation, base=reference, on_progress=on_progress,
                           cancel=abort if stopped else cancel)
        fields, details = _row(recipe, loaded, model, measured, reports, context.notes, stopped)
        if export_spec is not None and not stopped:
            exported = export_step(model, loaded, recipe, export_spec, measured, store, run_id,
                                   {**fields, "details": details}, on_progress, cancel)
            # the row's size is the artifact on disk (DESIGN.md); what the weights took in memory stays in details
            details.update(export=exported.as_dict(), size_in_memory_bytes=measured.size.size_bytes)
            fields.update(size_bytes=exported.size_bytes,
                          bits_per_weight=8 * exported.size_bytes / measured.size.params if measured.size.params
                          else None)
        return store.finish(run_id, wall_s=time.perf_counter() - started, details=details,
                            status="cancelled" if stopped else "ok", **fields)


def _row(recipe: Recipe, loaded: LoadedModel, model: torch.nn.Module, measured: Measurement, reports: list[dict],
         notes: list[str], cancelled: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the result row's metric fields, its details) of a measured run."""
    if cancelled and recipe.export:
        notes.append("not exported: the run was cancelled")
    base_perplexity = measured.quality.perplexity if not recipe.steps else measured.quality.base_perplexity
    fields = {"base_perplexity": base_perplexity, "kernel": kernel_label(model, measured.size),
              "device": str(loaded.device), **measured.row_fields()}
    details = {**measured.details(), "dtype": str(loaded.dtype).replace("torch.", ""), "steps": reports,
               "notes": notes, "method": " + ".join(r["label"] for r in reports) or "base"}
    return fields, details


def artifact_name(model_ref: str, spec: ExportSpec) -> str:
    """The export folder's name in the store, e.g. 'sample-teacher-gguf' (also the zip's name)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_ref.rstrip("/")).name or model_ref).strip("-.")[:60]
    return f"{slug or 'model'}-{spec.format}"


def export_step(model: torch.nn.Module, loaded: LoadedModel, recipe: Recipe, spec: ExportSpec,
                measured: Measurement, store: ResultStore, run_id: str, metrics: dict[str, Any],
                on_progress: ProgressFn | None, cancel: CancelFn | None) -> ExportResult:
    """Export the run's model to ``spec.path``, or (no path) into the run's artifact folder in the store."""
    if model is loaded.model and any(isinstance(m, QuantLinear) for m in model.modules()):
        model = clone(model)  # the check switches kernels for a moment: never on a shared (cached) model
    kwargs = {"recipe": recipe.to_dict(), "metrics": metrics, "on_progress": on_progress, "cancel": cancel,
              "check_text": loaded.tokenizer.decode(measured.windows[0]),
              "perplexity_before": measured.quality.perplexity}
    if spec.path:
        return export_model(model, loaded.tokenizer, spec, measured.windows, **kwargs)
    name = artifact_name(recipe.model, spec)
    with store.write_artifact(run_id) as scratch:
        result = export_model(model, loaded.tokenizer, spec, measured.windows, out=scratch / name,
                              record_path=store.artifact_dir(run_id) / name, **kwargs)
    final = store.artifact_dir(run_id) / name
    result.path = str(final)
    result.zip_path = str(final.with_name(name + ".zip")) if result.zip_path else None
    return result
