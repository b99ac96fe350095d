"""One trial of a sweep: its parameters (dotted path -> value), the recipe they make, and the key that
identifies it in the store (so a resumed sweep knows which trials are done)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import SpecError
from core.recipe.recipe import Recipe
from core.sweep.paths import apply_params


def params_key(params: Mapping[str, Any]) -> str:
    """The canonical JSON of a trial's parameters: what the store's ``sweep_params`` column holds."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Trial:
    """A point of the sweep; ``params`` is empty for the sweep's base measurement."""

    params: dict[str, Any]
    recipe: Recipe
    number: int | None = None  # the Optuna trial number, for a search

    @property
    def key(self) -> str:
        return params_key(self.params)

    @property
    def is_base(self) -> bool:
        return not self.params

    @property
    def family(self) -> str:
        """The method family, e.g. 'gptq' or 'magnitude+rtn' ('base' without steps): what cost estimates group by."""
        return method_family(" + ".join(step.parsed.label for step in self.recipe.steps))

    def label(self) -> str:
        return short_label(self.params)


def method_family(method: str | None) -> str:
    """'gptq w4 g32 sym + magnitude 50%' -> 'gptq+magnitude'; '' or None -> 'base'."""
    parts = [part.split()[0] for part in (method or "").split(" + ") if part.strip()]
    return "+".join(parts) if parts and parts != ["base"] else "base"


def short_label(params: Mapping[str, Any]) -> str:
    """'bits=4 method=rtn': each path by its last part, or more of it where two would read the same; a whole
    step swapped in at ``steps.N`` reads as the step itself ('prune method=wanda sparsity=0.5')."""
    if not params:
        return "base model"
    names = {}
    for path in params:
        parts = path.split(".")
        depth = 1
        while depth < len(parts) and sum(p.split(".")[-depth:] == parts[-depth:] for p in params) > 1:
            depth += 1
        names[path] = ".".join(parts[-depth:])
    return " ".join(_show_step(value) if _is_step(path, value) else f"{names[path]}={_show(value)}"
                    for path, value in params.items())


def _is_step(path: str, value: Any) -> bool:
    """A value that replaces a whole recipe step: ``{kind: {settings}}`` at a list index (``steps.0``)."""
    return (path.split(".")[-1].isdigit() and isinstance(value, Mapping) and len(value) == 1
            and isinstance(next(iter(value.values())), Mapping))


def _show_step(step: Mapping[str, Mapping[str, Any]]) -> str:
    kind, settings = next(iter(step.items()))
    return " ".join([kind, *(f"{key}={_show(value)}" for key, value in settings.items())])


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return str(value)


def make_trial(base: Mapping, params: Mapping[str, Any], number: int | None = None) -> Trial:
    """The trial's recipe: ``base`` with ``params`` set; refused, naming the trial, when it is not a valid recipe."""
    mapping = apply_params(base, params)
    try:
        recipe = Recipe.from_dict(mapping)
    except SpecError as error:
        raise SpecError(f"trial {short_label(params)} is not a valid recipe: {error}") from error
    return Trial(dict(params), recipe, number)


def base_trial(base: Mapping) -> Trial:
    """The base model measured once per sweep: the base recipe without steps (and without export)."""
    mapping = {key: value for key, value in base.items() if key not in ("steps", "export")}
    return Trial({}, Recipe.from_dict(mapping))
