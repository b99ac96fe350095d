"""Recipes: what to run, as data, and the pipeline that runs it.

* ``recipe``   - ``Recipe`` (model, steps, calibration, evaluation, export) and ``load_recipe``.
* ``steps``    - the one table of step kinds (``STEPS``): prune, quantize, distill.
* ``pipeline`` - ``run``: copy the base model, apply each step, evaluate, export, record the result row.
* ``texts``    - what ``default`` means for a model's texts, and the warning for a calibration or training
                 text from another domain than the evaluation text.
"""

from core.recipe.pipeline import apply_steps, artifact_name, export_step, run, step_context
from core.recipe.recipe import Recipe, Step, load_recipe
from core.recipe.steps import STEP_KINDS, STEPS, parse_step
from core.recipe.texts import domain_warning, resolved_source, text_domain

__all__ = ["STEPS", "STEP_KINDS", "Recipe", "Step", "apply_steps", "artifact_name", "domain_warning", "export_step",
           "load_recipe", "parse_step", "resolved_source", "run", "step_context", "text_domain"]
