"""The one table of step kinds: what a recipe's ``steps:`` may hold and which class runs each.

Adding a technique adds one row here (its package's step class, see ``core.technique.StepSpec``);
the recipe format, the CLI's step commands and the app's pages read this table.
"""

from __future__ import annotations

from typing import Any

from core.distill.step import DistillStep
from core.errors import SpecError
from core.prune.step import PruneStep
from core.quantize.step import QuantizeStep

STEPS: dict[str, type] = {
    "prune": PruneStep,
    "quantize": QuantizeStep,
    "distill": DistillStep,
}
STEP_KINDS: tuple[str, ...] = tuple(STEPS)


def parse_step(kind: str, params: dict[str, Any]) -> Any:
    """The validated step object for a recipe step (raises SpecError naming the kinds that exist)."""
    if kind not in STEPS:
        raise SpecError(f"unknown step {kind!r}; steps are {', '.join(STEP_KINDS)}")
    return STEPS[kind].from_dict(params)
