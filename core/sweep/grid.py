"""A grid: the cartesian product of the values listed per path (or the union of several such products)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from core.sweep.spec import SweepSpec
from core.sweep.trial import Trial, make_trial, params_key


def expand_grid(grids: Sequence[Mapping[str, list]]) -> list[dict[str, Any]]:
    """Every combination of each grid, in order (the last path varies fastest); a combination that two grids
    share is listed once."""
    seen: set[str] = set()
    combos: list[dict[str, Any]] = []
    for grid in grids:
        paths = list(grid)
        for values in itertools.product(*(grid[path] for path in paths)):
            params = dict(zip(paths, values, strict=True))
            if params_key(params) not in seen:
                seen.add(params_key(params))
                combos.append(params)
    return combos


def grid_trials(spec: SweepSpec) -> list[Trial]:
    """Every trial of a grid sweep, each recipe built and validated (a bad path or value is refused here,
    before any model is loaded)."""
    return [make_trial(spec.base, params) for params in expand_grid(spec.grid)]


class GridPlan:
    """The grid's trials not yet done, one at a time, in the grid's order."""

    def __init__(self, trials: list[Trial], done: Mapping[str, Any]) -> None:
        self._todo = [trial for trial in trials if trial.key not in done]
        self.skipped = len(trials) - len(self._todo)

    def next(self) -> Trial | None:
        return self._todo.pop(0) if self._todo else None

    def record(self, trial: Trial, row: Any) -> None:
        """Nothing to learn from a result: a grid's trials are fixed."""

    def remaining(self) -> int:
        return len(self._todo)

    def abandon(self) -> None:
        """Trials not run stay for the next run, which finds them not done."""
