"""The multiple-choice knapsack (core.plan.knapsack) against brute force on small random instances."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from core.errors import SpecError
from core.plan.knapsack import MultipleChoiceKnapsack


def brute_force(weights: np.ndarray, costs: np.ndarray, capacity: int) -> float:
    """The least total cost over every choice within ``capacity`` (inf when none fits)."""
    best = math.inf
    for choice in itertools.product(*(range(weights.shape[1]) for _ in range(weights.shape[0]))):
        rows = np.arange(len(choice))
        if weights[rows, choice].sum() <= capacity:
            best = min(best, float(costs[rows, choice].sum()))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_table_finds_the_brute_force_optimum_for_every_capacity(seed):
    rng = np.random.default_rng(seed)
    layers, options = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    unit = int(rng.choice([1, 3, 64, 1000]))  # shared factors, as real layer sizes have
    weights = rng.integers(0, 12, size=(layers, options)) * unit + int(rng.integers(0, 5))
    costs = rng.normal(size=(layers, options)).round(3)  # negative costs too (a noisy delta NLL)
    table = MultipleChoiceKnapsack(weights, costs)
    assert table.exact
    for capacity in range(int(weights.min(axis=1).sum()) - unit, int(weights.max(axis=1).sum()) + 2 * unit, unit):
        expected = brute_force(weights, costs, capacity)
        assert table.best_cost(capacity) == pytest.approx(expected, abs=1e-9)
        if math.isinf(expected):
            with pytest.raises(SpecError, match="below the lightest"):
                table.solve(capacity)
            continue
        solution = table.solve(capacity)
        assert solution.weight <= capacity
        assert solution.cost == pytest.approx(expected, abs=1e-9)


def test_a_coarse_grid_never_exceeds_the_capacity():
    rng = np.random.default_rng(7)
    weights = rng.integers(1_000, 2_000_000, size=(6, 3))  # no shared factor: the grid is coarsened
    costs = rng.random(size=(6, 3))
    table = MultipleChoiceKnapsack(weights, costs, max_units=500)
    assert not table.exact
    for capacity in np.linspace(weights.min(axis=1).sum(), weights.max(axis=1).sum(), 25).astype(int):
        solution = table.solve(int(capacity))
        assert solution.weight <= capacity
        assert solution.cost >= brute_force(weights, costs, int(capacity)) - 1e-12


def test_smallest_within_a_cost_is_the_lightest_such_choice():
    weights = np.array([[1, 2, 4], [1, 3, 5]])
    costs = np.array([[3.0, 1.0, 0.0], [4.0, 1.5, 0.5]])
    table = MultipleChoiceKnapsack(weights, costs)
    found = table.smallest_within(2.5)
    assert found is not None and found.cost <= 2.5
    lighter = [brute_force(weights, costs, c) for c in range(int(found.weight))]
    assert all(cost > 2.5 for cost in lighter)
    assert table.smallest_within(0.1) is None  # even the heaviest choice costs 0.5


def test_disallowed_options_are_never_chosen():
    weights = np.array([[1, 2], [1, 2]])
    costs = np.array([[np.inf, 1.0], [5.0, 0.0]])
    assert MultipleChoiceKnapsack(weights, costs).solve(10).choice == (1, 1)


def test_bad_tables_are_refused():
    with pytest.raises(SpecError, match="equal"):
        MultipleChoiceKnapsack(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(SpecError, match="at least one allowed option"):
        MultipleChoiceKnapsack(np.ones((1, 2)), np.full((1, 2), np.inf))
