"""SqueezeLab's compression engine: a plain Python library (never imports streamlit).

The public API is the names below; each is imported on first use, so ``import core`` stays cheap and
nothing here creates an import cycle. A notebook, the CLI, the app or a worker uses them like::

    from core import Recipe, ResultStore, run
    row = run(Recipe.from_dict({"model": "sample:teacher", "steps": [{"prune": {"method": "wanda", "sparsity": 0.5}}]}),
              ResultStore())

The packages, one per part of the engine (each ``__init__`` lists its modules):
``models``, ``calibration``, ``prune``, ``quantize``, ``distill``, ``plan``, ``evaluate``, ``export``, ``recipe``,
``sweep``, ``cli``; and the shared modules ``checks``, ``errors``, ``progress``, ``layers``, ``data``, ``store``,
``technique``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC: dict[str, str] = {
    # models
    "load": "core.models.loading", "clone": "core.models.loading", "LoadedModel": "core.models.source",
    "resolve": "core.models.source", "sample_names": "core.models.source", "DEFAULT_MODEL": "core.models.source",
    "load_exported": "core.models.exported",
    # recipes and their runs
    "Recipe": "core.recipe.recipe", "Step": "core.recipe.recipe", "load_recipe": "core.recipe.recipe",
    "STEPS": "core.recipe.steps", "STEP_KINDS": "core.recipe.steps", "run": "core.recipe.pipeline",
    "CalibrationSpec": "core.calibration.spec", "EvalSpec": "core.evaluate.spec",
    "ResultStore": "core.store", "ResultRow": "core.store", "RESULT_FIELDS": "core.store",
    "UnknownResultError": "core.store", "default_results_dir": "core.store",
    # sweeps: many recipes from one, a grid or an Optuna search
    "SweepSpec": "core.sweep.spec", "SweepReport": "core.sweep.report", "load_sweep": "core.sweep.spec",
    "run_sweep": "core.sweep.run", "sweep_report": "core.sweep.run", "sweep_cost": "core.sweep.run",
    "stored_sweep": "core.sweep.run", "sweep_names": "core.sweep.run",
    # techniques
    "PruneSpec": "core.prune.spec", "prune_": "core.prune.apply", "ThresholdPreview": "core.prune.preview",
    "StructuredSpec": "core.prune.structured.spec", "params_removed": "core.prune.structured.apply",
    "removal_count": "core.prune.structured.scores",
    "QuantizeSpec": "core.quantize.spec", "QuantScheme": "core.quantize.scheme", "GROUP_SIZES": "core.quantize.scheme",
    "quantize_": "core.quantize.apply", "plan_layers": "core.quantize.apply",
    "DistillSpec": "core.distill.spec", "distill_": "core.distill.train",
    "evenly_spaced_layers": "core.distill.students",
    # planning: sensitivity atlas and budget planner
    "Atlas": "core.plan.atlas", "AtlasRequest": "core.plan.request", "atlas_for": "core.plan.request",
    "cached_atlas": "core.plan.request", "list_atlases": "core.plan.cache", "Budget": "core.plan.menu",
    "quantize_menu": "core.plan.menu", "prune_menu": "core.plan.menu", "Planner": "core.plan.planner",
    "Plan": "core.plan.planner", "step_params": "core.plan.planner",
    # measuring and exporting
    "evaluate_quality": "core.evaluate.quality", "measure_size": "core.evaluate.size",
    "measure_latency": "core.evaluate.latency", "measure": "core.evaluate.measurement",
    "ExportSpec": "core.export.spec", "FORMATS": "core.export.spec", "GGUF_TYPES": "core.export.spec",
    "export_model": "core.export.export", "writable_formats": "core.export.export",
    # generating text
    "generate_stream": "core.generate", "generate": "core.generate", "load_for_generation": "core.generate",
    "Generated": "core.generate",
    # layers and errors
    "block_linear_layers": "core.layers", "decoder_blocks": "core.layers", "param_count": "core.layers",
    "weight_matrix": "core.layers",
    "SqueezeLabError": "core.errors", "SpecError": "core.errors", "CancelledError": "core.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import a public name from its module the first time it is asked for."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
