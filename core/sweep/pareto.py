"""The Pareto front of points with several objectives: pure functions on tuples, no store, no model.

A point dominates another when it is at least as good on every objective and better on one. The
front is the points no other point dominates. Sorting by the first objective means a point can only
be dominated by one before it, so each point is compared with the front found so far (not with every
point): n log n + n * |front| comparisons.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _oriented(point: Sequence[float], lower_better: Sequence[bool]) -> tuple[float, ...]:
    """The point with every objective turned into one where lower is better."""
    return tuple(value if lower else -value for value, lower in zip(point, lower_better, strict=True))


def dominates(a: Sequence[float], b: Sequence[float], lower_better: Sequence[bool]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on at least one."""
    a, b = _oriented(a, lower_better), _oriented(b, lower_better)
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_indices(points: Sequence[Sequence[float | None]], lower_better: Sequence[bool]) -> list[int]:
    """Indices of the points on the Pareto front, in the order given. A point with a missing or
    non-finite value is never on it; two identical points are both on it."""
    valid = [i for i, point in enumerate(points)
             if len(point) == len(lower_better) and all(v is not None and math.isfinite(v) for v in point)]
    order = sorted(valid, key=lambda i: _oriented(points[i], lower_better))
    front: list[int] = []
    for index in order:
        if not any(dominates(points[kept], points[index], lower_better) for kept in front):
            front.append(index)
    return sorted(front)
