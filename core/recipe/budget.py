"""Steps with a ``budget:``: planned before the run, so the recipe the run records needs no planning.

``resolve_budgets`` turns every ``quantize`` / ``prune`` step that gives a budget into the same step with
fixed per-layer settings (``core.plan.planner.step_params``): the atlas of the model as that step
receives it (cached under the results folder), the cheapest choice within the budget, and ``planned:``
recording the budget and the prediction. A budget step after other steps is planned on a scratch copy
with those steps applied (they run once more in the run itself).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from core.layers import block_linear_layers, weight_matrix
from core.models.loading import clone
from core.models.source import LoadedModel
from core.plan.menu import parse_budget
from core.plan.planner import Planner, check_budget_fits, step_params
from core.plan.request import AtlasRequest, atlas_for
from core.plan.sizes import LayerShape, element_size, fixed_bytes
from core.progress import report
from core.recipe.recipe import Recipe, Step
from core.technique import StepContext


def step_budget(step: Step) -> dict[str, Any] | None:
    """The ``budget:`` of a quantize or prune step (None for any other step or one without a budget)."""
    return step.params.get("budget") if step.kind in ("quantize", "prune") else None


def needs_planning(recipe: Recipe) -> bool:
    return any(step_budget(step) is not None for step in recipe.steps)


def plan_step(step: Step, model, loaded: LoadedModel, recipe: Recipe, context: StepContext,
              cache_root: str | Path | None) -> tuple[Step, Any, Any]:
    """(the step with its budget resolved, the plan, the atlas) for ``model`` as this step receives it."""
    params = step.params
    spec = step.parsed.spec if step.kind == "prune" else step.parsed
    budget, menu = parse_budget(params["budget"], step.kind, spec.method, params.get("group_size"),
                                params.get("symmetric", True))
    calibration = replace(recipe.calibration, seqlen=context.seqlen)
    request = AtlasRequest(recipe.model, menu, budget.mode, calibration, budget.heldout, budget.heldout_tokens,
                           spec.include, spec.exclude)
    layers = [LayerShape(name, *weight_matrix(module).shape)
              for name, module in block_linear_layers(model, spec.include, spec.exclude)]
    check_budget_fits(layers, menu, budget, fixed_bytes(model, [layer.name for layer in layers]), element_size(model))
    atlas = atlas_for(model, loaded.tokenizer, context.default_text, request, cache_root, loaded.context_length,
                      context.on_progress, context.cancel)
    plan = Planner(atlas, budget.mode).plan(budget)
    return Step(step.kind, step_params(plan, step.kind, params, atlas.key, budget.mode)), plan, atlas


def resolve_budgets(recipe: Recipe, loaded: LoadedModel, context: StepContext,
                    cache_root: str | Path | None = None) -> Recipe:
    """``recipe`` with every budget step planned (see the module docstring); the base model is not changed."""
    resolved: list[Step] = []
    scratch, applied = None, 0
    scratch_context = replace(context, notes=[])  # the scratch run's notes are not the run's
    for index, step in enumerate(recipe.steps):
        if step_budget(step) is None:
            resolved.append(step)
            continue
        if index > 0:  # the model as this step receives it: the earlier steps on a scratch copy
            scratch = scratch if scratch is not None else clone(loaded.model)
            for earlier in resolved[applied:]:
                earlier.parsed.apply(scratch, scratch_context)
                scratch = scratch_context.take_model(scratch)
            applied = len(resolved)
        report(context.on_progress, f"plan step {index + 1}", 0.0)
        planned, _, _ = plan_step(step, scratch if scratch is not None else loaded.model, loaded, recipe, context,
                               cache_root)
        resolved.append(planned)
    return replace(recipe, steps=tuple(resolved))
