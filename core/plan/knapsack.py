"""The multiple-choice knapsack, solved exactly by dynamic programming: pure numpy, no model.

Every layer takes exactly one of its options; option ``k`` of layer ``l`` weighs ``weights[l, k]``
(whole bytes, or non-zero weights) and costs ``costs[l, k]``; the total weight may not exceed a
capacity. The table of best costs is built once for every capacity up to the largest useful one, so a
budget slider only walks the table back (``MultipleChoiceKnapsack.solve``, O(layers)).

Weights are measured from each layer's lightest option and divided by their greatest common divisor:
real layer shapes share large factors (SmolLM2's 3- and 4-bit g64 options differ by multiples of
13,824 bytes), so the table stays small and the answer is exact. Only when the grid would exceed
``max_units`` cells are the weights rounded *up* to a coarser grid: every answer then still fits the
capacity, ``exact`` is False, and the cost may exceed the optimum by what that rounding hides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np

from core.checks import require

MAX_UNITS = 200_000  # cells per layer in the table: 210 layers x 200k = 42 MB of choices at worst


@dataclass(frozen=True)
class Solution:
    """One answer: the option per layer, its total weight and cost."""

    choice: tuple[int, ...]
    weight: int
    cost: float


class MultipleChoiceKnapsack:
    """The DP table for ``weights`` and ``costs`` [layers, options] (inf cost: option not allowed)."""

    def __init__(self, weights: np.ndarray, costs: np.ndarray, max_units: int = MAX_UNITS) -> None:
        weights, costs = np.asarray(weights, dtype=np.int64), np.asarray(costs, dtype=np.float64)
        require(weights.ndim == 2 and weights.shape == costs.shape and weights.size > 0,
                f"weights and costs must be two equal [layers, options] arrays, got {weights.shape} and {costs.shape}")
        require(bool((weights >= 0).all()), "option weights must be >= 0")
        require(bool(np.isfinite(costs).any(axis=1).all()), "every layer needs at least one allowed option")
        self.weights, self.costs = weights, costs
        lightest = np.where(np.isfinite(costs), weights, np.iinfo(np.int64).max).min(axis=1)
        self.base = int(lightest.sum())  # the weight every answer carries at least
        deltas = weights - lightest[:, None]
        self.unit, self.exact = _unit(deltas[np.isfinite(costs)], max_units)
        self.units = -(-np.where(np.isfinite(costs), deltas, 0) // self.unit)  # ceil: never under-counted
        self.max_weight = self.base + int(np.where(np.isfinite(costs), deltas, 0).max(axis=1).sum())
        self._best, self._choice = _table(self.units, costs)

    @property
    def capacity_units(self) -> int:
        return self._best.shape[0] - 1

    def feasible(self, capacity: int) -> bool:
        """Whether some choice fits ``capacity``."""
        return capacity >= self.base

    def _cell(self, capacity: int) -> int:
        return min(self.capacity_units, (capacity - self.base) // self.unit)

    def best_cost(self, capacity: int) -> float:
        """The least total cost within ``capacity`` (inf when nothing fits)."""
        return float(self._best[self._cell(capacity)]) if self.feasible(capacity) else math.inf

    def best_costs(self) -> tuple[np.ndarray, np.ndarray]:
        """(capacities, least cost at each) over the whole table: the cost of every budget at once."""
        cells = np.arange(self.capacity_units + 1)
        return self.base + cells * self.unit, self._best.copy()

    def solve(self, capacity: int) -> Solution:
        """The cheapest choice whose weight fits ``capacity``; SpecError when even the lightest does not."""
        require(self.feasible(capacity), f"capacity {capacity} is below the lightest choice ({self.base})")
        cell = self._cell(capacity)
        choice = []
        for layer in range(self.weights.shape[0] - 1, -1, -1):
            option = int(self._choice[layer, cell])
            choice.append(option)
            cell -= int(self.units[layer, option])
        choice.reverse()
        rows = np.arange(len(choice))
        return Solution(tuple(choice), int(self.weights[rows, choice].sum()), float(self.costs[rows, choice].sum()))

    def smallest_within(self, max_cost: float) -> Solution | None:
        """The lightest answer whose least cost is at most ``max_cost`` (None: no choice is that cheap)."""
        fits = np.nonzero(self._best <= max_cost)[0]
        if fits.size == 0:
            return None
        return self.solve(self.base + int(fits[0]) * self.unit)


def _unit(deltas: np.ndarray, max_units: int) -> tuple[int, bool]:
    """(grid step, exact): the gcd of the weight steps, coarsened only when the table would be too long."""
    positive = [int(d) for d in deltas.ravel() if d > 0]
    if not positive:
        return 1, True
    unit = reduce(math.gcd, positive)
    span = sum(positive)  # an upper bound of the largest useful capacity in weight units
    if span // unit <= max_units:
        return unit, True
    return max(unit, -(-span // max_units)), False


def _table(units: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """best[c]: least cost of all layers within c units; choice[l, c]: layer l's option on that path.

    ``best`` uses "within" (not "exactly") c units, so it never rises with c and a walk back from any c
    is valid. Each layer is one vectorized min over its options' shifted copies of the previous row.
    """
    layers, options = units.shape
    capacity = int(units.max(axis=1).sum())
    best = np.zeros(capacity + 1)
    choice = np.zeros((layers, capacity + 1), dtype=np.int16 if options > 127 else np.int8)
    for layer in range(layers):
        new = np.full(capacity + 1, np.inf)
        for option in range(options):
            cost, shift = costs[layer, option], int(units[layer, option])
            if not np.isfinite(cost):
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[shift:] = best[: capacity + 1 - shift] + cost
            better = candidate < new
            new[better] = candidate[better]
            choice[layer, better] = option
        best = new
    return best, choice
