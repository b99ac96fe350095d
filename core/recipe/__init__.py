"""Recipes: what to run, as data, and the pipeline that runs it.

* ``recipe``   - ``Recipe`` (model, steps, calibration, evaluation, export) and ``load_recipe``.
* ``steps``    - the one table of step kinds (``STEPS``): prune, quantize, distill.
* ``pipeline`` - ``run``: copy the base model, apply each step, evaluate, export, record the result row.
"""

from core.recipe.pipeline import apply_steps, artifact_name, export_step, run, step_context
from core.recipe.recipe import Recipe, Step, load_recipe
from core.recipe.steps import STEP_KINDS, STEPS, parse_step

__all__ = ["STEPS", "STEP_KINDS", "Recipe", "Step", "apply_steps", "artifact_name", "export_step", "load_recipe",
           "parse_step", "run", "step_context"]
