"""The Sweep page's glue: a sweep file from the page's choices, the sweep as a background job, its trials as a table.

A page sweep varies the parameters of one technique chain (``TECHNIQUES``) over a recipe built from the
sidebar's model and evaluation; the file it makes is an ordinary sweep file (``core.sweep``), shown on the
page, so the same sweep runs from the command line with ``squeezelab sweep``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from core import Recipe, SweepReport, SweepSpec, run_sweep, stored_sweep, sweep_report
from core.calibration import CalibrationSpec
from core.models import LoadedModel
from core.store import ResultStore, default_results_dir
from core.sweep import TrialEvent, short_label, trial_params
from ui import jobs, state
from ui.cache import store_at
from ui.state import Selection


@dataclass(frozen=True)
class Param:
    """A step parameter the page can vary: its grid choices and defaults, and its search range."""

    step: str  # the step kind it belongs to
    name: str  # the step's parameter
    label: str
    options: tuple  # what a grid offers
    default: tuple  # what a grid starts with
    kind: str  # int / float / choice: how a search varies it
    bounds: tuple = ()  # int / float: the search range the page offers
    step_size: float | None = None


PARAMS: tuple[Param, ...] = (
    Param("prune", "method", "Pruning method", ("magnitude", "wanda", "sparsegpt"), ("magnitude",), "choice"),
    Param("prune", "sparsity", "Sparsity", (0.3, 0.4, 0.5, 0.6, 0.7), (0.3, 0.5), "float", (0.0, 0.9), 0.05),
    Param("quantize", "method", "Quantization method", ("rtn", "gptq"), ("rtn",), "choice"),
    Param("quantize", "bits", "Bits", (2, 3, 4, 8), (4, 8), "int", (2, 8)),
    Param("quantize", "group_size", "Group size", (32, 64, 128), (32,), "choice"),
    Param("distill", "temperature", "Temperature", (1.0, 2.0, 4.0), (2.0,), "float", (1.0, 8.0), 0.5),
    Param("distill", "steps", "Training steps", (10, 20, 50, 100), (20,), "int", (10, 200), 10),
)
TECHNIQUES: dict[str, tuple[str, ...]] = {
    "quantize": ("quantize",), "prune": ("prune",), "prune+quantize": ("prune", "quantize"),
    "prune+distill": ("prune", "distill"),
}
TECHNIQUE_LABELS = {"quantize": "Quantize", "prune": "Prune", "prune+quantize": "Prune, then quantize",
                    "prune+distill": "Prune, then recover by distillation"}
# each step's starting parameters; the swept ones are set per trial
STEP_DEFAULTS: dict[str, dict[str, Any]] = {
    "prune": {"method": "magnitude", "sparsity": 0.5},
    "quantize": {"method": "rtn", "bits": 4, "group_size": 32},
    "distill": {"student": "self", "temperature": 2.0, "steps": 20, "batch_size": 4, "seqlen": 128,
                "eval_every": 0},
}
CALIBRATED = {"gptq", "wanda", "sparsegpt"}


def params_of(technique: str) -> list[Param]:
    return [p for p in PARAMS if p.step in TECHNIQUES[technique]]


def path_of(technique: str, param: Param) -> str:
    return f"steps.{TECHNIQUES[technique].index(param.step)}.{param.step}.{param.name}"


def base_recipe(selection: Selection, loaded: LoadedModel, technique: str,
                calibration: CalibrationSpec | None) -> dict:
    """The sweep's base recipe: the sidebar's model and evaluation, the chain's steps at their defaults."""
    evaluation, _ = selection.eval_spec(loaded.context_length)
    steps = [{kind: dict(STEP_DEFAULTS[kind])} for kind in TECHNIQUES[technique]]
    if "distill" in TECHNIQUES[technique]:
        steps[-1]["distill"]["seqlen"] = min(128, loaded.context_length)
    recipe = Recipe.from_dict({"model": selection.model, "steps": steps, "device": selection.recipe_device,
                               "dtype": selection.recipe_dtype})
    return dataclasses.replace(recipe, calibration=calibration or CalibrationSpec(), evaluation=evaluation).to_dict()


def needs_calibration(values: dict[str, Any]) -> bool:
    """Whether a chosen method (or distillation) uses calibration text."""
    chosen = {str(v) for value in values.values() for v in (value if isinstance(value, list | tuple) else [value])}
    return bool(chosen & CALIBRATED) or any(key.split(".")[2] == "distill" for key in values)


def sweep_mapping(base: dict, technique: str, values: dict[str, Any], tolerance: float, search: dict | None,
                  name: str = "") -> dict:
    """The sweep file: ``values`` maps each path to its grid values (a list) or its search range (a tuple);
    ``search`` is None for a grid, else ``{trials, sampler}``."""
    mapping: dict[str, Any] = {"base": base, "constraint": {"perplexity": f"<= {1 + tolerance:.4g} * base"}}
    if search is None:
        mapping["grid"] = {path: list(v) for path, v in values.items()}
    else:
        kinds = {path_of(technique, p): p for p in params_of(technique)}
        space = {}
        for path, value in values.items():
            param = kinds[path]
            if param.kind == "choice" or isinstance(value, list):
                space[path] = {"choice": list(value)}
            else:
                space[path] = {param.kind: list(value), **({"step": param.step_size} if param.step_size else {})}
        mapping["search"] = {"space": space, "objectives": {"perplexity": "min", "size_bytes": "min"}, **search}
    mapping["sweep"] = name or default_name(base["model"], technique, mapping)
    return {"sweep": mapping.pop("sweep"), **mapping}


def default_name(model: str, technique: str, mapping: dict) -> str:
    """'sample-teacher-quantize-1a2b3c': the same choices give the same name, so running them again resumes."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model.rstrip("/").split("/")[-1]).strip("-.")[:40] or "model"
    digest = hashlib.sha1(json.dumps(mapping, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{slug}-{technique.replace('+', '-')}-{digest}"


def submit(spec: SweepSpec, loaded: LoadedModel, max_trials: int | None, max_minutes: float | None) -> str:
    """Run the sweep as a background job (locally, on the cached base model); the job ends on the best trial."""
    def task(on_progress, cancel, on_record) -> str | None:  # noqa: ANN001 - the worker's callbacks
        def on_trial(event: TrialEvent) -> None:
            on_record({"finished": event.finished, "planned": event.planned, "id": event.row.id,
                       "status": event.row.status, "label": event.trial.label()})

        store = ResultStore(default_results_dir())  # the worker writes; the pages only read (store_at)
        report = run_sweep(spec, store, base=loaded, max_trials=max_trials, max_minutes=max_minutes,
                           on_trial=on_trial, on_progress=on_progress, cancel=cancel)
        return report.best or (report.base.id if report.base is not None else None)

    recipe = spec.base_recipe
    return jobs.worker().submit(recipe, loaded, label=f"sweep {spec.name} on {recipe.model}", page=state.current_page(),
                                task=task)


def report_of(name: str, results_dir: str) -> tuple[SweepSpec, SweepReport] | None:
    """A stored sweep and its report, or None when its sweep file is not kept beside the results."""
    store = store_at(results_dir)
    spec = stored_sweep(store, name)
    return None if spec is None else (spec, sweep_report(spec, store))


def param_labels(report: SweepReport) -> dict[str, str]:
    """Column name -> label of every swept parameter, as the trial labels name them."""
    paths: dict[str, None] = {}
    for row in report.trials:
        paths.update(dict.fromkeys(trial_params(row)))
    labels = short_label(dict.fromkeys(paths, 0)).split(" ") if paths else []
    return {path: label.rsplit("=", 1)[0] for path, label in zip(paths, labels, strict=True)}


def trials_frame(report: SweepReport) -> pd.DataFrame:
    """One row per trial: id, status, label, the figures the page shows, the front / acceptable / best marks,
    and one column per swept parameter (named by its path)."""
    pareto, acceptable = set(report.pareto), set(report.acceptable)
    records = []
    for row in report.trials:
        records.append({
            "id": row.id, "status": row.status, "label": short_label(trial_params(row)),
            "perplexity": row.perplexity, "ci_low": row.perplexity_ci_low, "ci_high": row.perplexity_ci_high,
            "size_mb": row.size_bytes / 1e6 if row.size_bytes is not None else None,
            "bits_per_weight": row.bits_per_weight, "kl_to_base": row.kl_to_base, "wall_s": row.wall_s,
            "pareto": row.id in pareto, "acceptable": row.id in acceptable, "best": row.id == report.best,
            "error": row.error, **trial_params(row),
        })
    columns = ["id", "status", "label", "perplexity", "ci_low", "ci_high", "size_mb", "bits_per_weight", "kl_to_base",
               "wall_s", "pareto", "acceptable", "best", "error", *param_labels(report)]
    return pd.DataFrame.from_records(records, columns=columns)
