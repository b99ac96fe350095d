"""Recipe -> copy of the base model -> steps -> evaluation -> (export) -> result row.

The base model is never mutated: steps work on ``clone(base)``. A run is recorded in the store
before any work starts, so a crash leaves a failed row, never a missing one. With an ``export:``
section the compressed model is written (``core.export``), reloaded and checked, and the row's
``size_bytes`` is the artifact's size on disk.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from core import data, evaluate, models, steps
from core.evaluate import CancelFn, ProgressFn
from core.export import ExportResult, ExportSpec, check_target, export_model
from core.qlinear import QuantLinear
from core.quantize import kernel_summary
from core.specs import EvalSpec, Recipe
from core.store import ResultRow, ResultStore


@dataclass
class Measurement:
    """Everything one evaluation measured, ready to become result-row fields."""

    quality: evaluate.QualityMetrics
    size: evaluate.SizeMetrics
    latency: evaluate.LatencyMetrics | None
    text: str
    windows: torch.Tensor | None = None  # the evaluation windows [n, seqlen] (an export re-scores some of them)

    def row_fields(self) -> dict:
        latency = self.latency
        return {
            "perplexity": self.quality.perplexity,
            "top1_acc": self.quality.top1_acc,
            "top1_agreement": self.quality.top1_agreement,
            "kl_to_base": self.quality.kl_to_base,
            "params": self.size.params,
            "nonzero_params": self.size.nonzero_params,
            "size_bytes": self.size.size_bytes,
            "bits_per_weight": self.size.bits_per_weight,
            "prefill_ms": latency.prefill_ms if latency else None,
            "decode_tok_s": latency.decode_tok_s if latency else None,
            "peak_mem_bytes": latency.peak_mem_bytes if latency else None,
        }

    def details(self) -> dict:
        return {
            "text": self.text,
            "seqlen": self.quality.seqlen,
            "windows": self.quality.windows,
            "tokens_scored": self.quality.tokens_scored,
            "latency": self.latency.as_dict() if self.latency else None,
            "threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
        }


def eval_windows(loaded: models.LoadedModel, spec: EvalSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(all token ids of the evaluation text, the windows scored) for a model and spec."""
    text = data.load_text(spec.text, default=loaded.source.default_text)
    ids = data.tokenize(loaded.tokenizer, text.text)
    return ids, data.windows(ids, spec.resolved_seqlen(loaded.context_length), spec.max_windows)


def measure(
    model: torch.nn.Module,
    loaded: models.LoadedModel,
    spec: EvalSpec,
    base: torch.nn.Module | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Measurement:
    """Quality on the spec's windows (agreement with ``base`` if given), size, and latency."""
    ids, windows = eval_windows(loaded, spec)
    quality = evaluate.evaluate_quality(model, windows, base=base, on_progress=on_progress, cancel=cancel)
    latency = None
    if spec.latency:
        if on_progress:
            on_progress("latency", 0.0)
        prompt_tokens, new_tokens = fit_to_context(spec.prompt_tokens, spec.new_tokens, loaded.context_length)
        prompt_tokens = min(prompt_tokens, ids.numel())
        latency = evaluate.measure_latency(model, ids[:prompt_tokens], new_tokens, runs=spec.latency_runs,
                                           cancel=cancel)
    return Measurement(quality, evaluate.measure_size(model), latency, spec.text, windows)


def fit_to_context(prompt_tokens: int, new_tokens: int, context_length: int) -> tuple[int, int]:
    """Shrink the latency prompt / generation so both fit the model's context (half each at worst)."""
    if prompt_tokens + new_tokens <= context_length:
        return prompt_tokens, new_tokens
    prompt = min(prompt_tokens, max(1, context_length // 2))
    return prompt, max(1, min(new_tokens, context_length - prompt))


def kernel_label(model: torch.nn.Module, size: evaluate.SizeMetrics) -> str:
    """What runs the matmuls, e.g. 'dense float32 (torch cpu)' or 'dense float32 with zeros (torch cpu)'.

    A quantized model names the kernels of its quantized layers, e.g. '4-bit int4_weight_only x210 (torch cpu)'.
    """
    quantized = kernel_summary(model)
    if quantized is not None:
        return quantized
    parameter = next(model.parameters())
    zeros = " with zeros" if size.nonzero_params < 0.99 * size.params else ""
    return f"dense {str(parameter.dtype).replace('torch.', '')}{zeros} (torch {parameter.device.type})"


def step_context(recipe: Recipe, loaded: models.LoadedModel, on_progress: ProgressFn | None,
                 cancel: CancelFn | None) -> steps.StepContext:
    """Calibration settings for the recipe's steps; windows never exceed the model's context."""
    calibration = recipe.calibration
    seqlen = min(calibration.seqlen, loaded.context_length)
    context = steps.StepContext(
        tokenizer=loaded.tokenizer, default_text=loaded.source.default_calibration_text,
        calibration_text=calibration.text,
        samples=calibration.samples, seqlen=seqlen, seed=calibration.seed, on_progress=on_progress, cancel=cancel,
    )
    if seqlen < calibration.seqlen:
        context.notes.append(f"calibration seqlen {calibration.seqlen} cut to the model's context, {seqlen}")
    return context


def run(
    recipe: Recipe,
    store: ResultStore,
    base: models.LoadedModel | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> ResultRow:
    """Run a recipe end to end, record it in ``store`` and return its result row.

    ``base`` lets a caller that already holds the loaded model (the app's cache) skip loading; it is
    never modified: steps run on a deep copy, and a distill step uses it as its (frozen) teacher.
    ``on_step`` receives every training step's record (loss terms, learning rate, perplexity) live.
    """
    # What can be checked without loading fails before any row is written.
    models.resolve(recipe.model)
    models.pick_dtype(models.pick_device(recipe.device), recipe.dtype)
    data.check_source(recipe.evaluation.text)
    data.check_source(recipe.calibration.text)
    export_spec = ExportSpec.from_dict(recipe.export) if recipe.export else None
    if export_spec is not None and export_spec.path:
        check_target(Path(export_spec.path), export_spec.overwrite)
    started = time.perf_counter()
    with store.run(recipe.model, recipe.to_yaml(), device=recipe.device) as run_id:
        if on_progress:
            on_progress("load", 0.0)
        loaded = base or models.load(recipe.model, device=recipe.device, dtype=recipe.dtype)
        model = models.clone(loaded.model) if recipe.steps else loaded.model
        context = step_context(recipe, loaded, on_progress, cancel)
        context.teacher, context.on_step = loaded.model, on_step
        reports = []
        for step in recipe.steps:
            reports.append(steps.apply_step(model, step.parsed, context))
            model = context.take_model(model)  # a distill step may hand over another (student) model
        reference = loaded.model if recipe.steps and recipe.evaluation.compare_to_base else None
        measured = measure(model, loaded, recipe.evaluation, base=reference, on_progress=on_progress, cancel=cancel)
        base_perplexity = measured.quality.perplexity if not recipe.steps else measured.quality.base_perplexity
        fields = {"base_perplexity": base_perplexity, "kernel": kernel_label(model, measured.size),
                  "device": str(loaded.device), **measured.row_fields()}
        details = {**measured.details(), "dtype": str(loaded.dtype).replace("torch.", ""), "steps": reports,
                   "notes": context.notes, "method": " + ".join(r["label"] for r in reports) or "base"}
        if export_spec is not None:
            exported = export_step(model, loaded, recipe, export_spec, measured, store, run_id,
                                   {**fields, "details": details}, on_progress, cancel)
            # the row's size is the artifact on disk (DESIGN.md); what the weights took in memory stays in details
            details.update(export=exported.as_dict(), size_in_memory_bytes=measured.size.size_bytes)
            fields.update(size_bytes=exported.size_bytes,
                          bits_per_weight=8 * exported.size_bytes / measured.size.params if measured.size.params
                          else None)
        return store.finish(run_id, wall_s=time.perf_counter() - started, details=details, **fields)


def artifact_name(model_ref: str, spec: ExportSpec) -> str:
    """The export folder's name in the store, e.g. 'sample-teacher-gguf' (also the zip's name)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_ref.rstrip("/")).name or model_ref).strip("-.")[:60]
    return f"{slug or 'model'}-{spec.format}"


def export_step(model: torch.nn.Module, loaded: models.LoadedModel, recipe: Recipe, spec: ExportSpec,
                measured: Measurement, store: ResultStore, run_id: str, metrics: dict[str, Any],
                on_progress: ProgressFn | None, cancel: CancelFn | None) -> ExportResult:
    """Export the run's model to ``spec.path``, or (no path) into the run's artifact folder in the store."""
    if model is loaded.model and any(isinstance(m, QuantLinear) for m in model.modules()):
        model = models.clone(model)  # the check switches kernels for a moment: never on a shared (cached) model
    kwargs = {"recipe": recipe.to_dict(), "metrics": metrics, "on_progress": on_progress, "cancel": cancel,
              "check_text": loaded.tokenizer.decode(measured.windows[0]),
              "perplexity_before": measured.quality.perplexity}
    if spec.path:
        return export_model(model, loaded.tokenizer, spec, measured.windows, **kwargs)
    name = artifact_name(recipe.model, spec)
    with store.write_artifact(run_id) as scratch:
        result = export_model(model, loaded.tokenizer, spec, measured.windows, out=scratch / name, **kwargs)
    final = store.artifact_dir(run_id) / name
    result.path = str(final)
    result.zip_path = str(final.with_name(name + ".zip")) if result.zip_path else None
    return result
