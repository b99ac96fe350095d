"""Budget -> one option per layer -> the step's parameters, with the predicted size and perplexity.

``Planner(atlas, mode)`` prepares one knapsack table per kind of weight (stored bytes, non-zeros) once;
after that every budget is a walk back through the table (a slider move costs microseconds).

* ``avg_bits``: stored bits per weight of the planned layers (codes, fp16 scales, zero points, or sparse
  storage) at most the budget;
* ``size_mb``: all stored weights (the planned layers plus everything else, ``Atlas.fixed_bytes``) at
  most the budget, in 10^6 bytes;
* ``sparsity``: zeros among the planned layers' weights at least the budget;
* ``max_ppl``: the smallest stored size whose predicted perplexity is at most the budget.

The cost minimized is the sum of the layers' costs in the atlas (KL in measured mode, the proxy
otherwise); the predicted perplexity is the atlas's base perplexity times exp(fit(sum)).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.checks import require
from core.errors import SpecError
from core.plan.atlas import Atlas
from core.plan.knapsack import MultipleChoiceKnapsack
from core.plan.menu import Budget, Menu, Option, budget_mapping
from core.plan.sizes import LayerShape, size_table


@dataclass(frozen=True)
class Plan:
    """One option per layer and what it is predicted to give."""

    budget: Budget
    menu: Menu
    layers: list[str]
    options: list[Option]  # per layer
    size_bytes: int  # every stored weight of the model
    planned_bytes: int  # the planned layers' stored bytes
    avg_bits: float  # stored bits per weight of the planned layers
    sparsity: float  # zeros among the planned layers' weights
    cost: float  # the sum the plan minimized
    nll_delta: float  # predicted
    base_perplexity: float  # the atlas's, on its held-out windows
    exact: bool  # the knapsack ran on the exact weights (not a coarser grid)

    @property
    def perplexity_ratio(self) -> float:
        return math.exp(self.nll_delta)

    @property
    def perplexity(self) -> float:
        """Predicted perplexity on the atlas's held-out windows."""
        return self.base_perplexity * self.perplexity_ratio

    def predicted(self) -> dict[str, Any]:
        return {"size_bytes": self.size_bytes, "planned_bytes": self.planned_bytes, "avg_bits": self.avg_bits,
                "sparsity": self.sparsity, "cost": self.cost, "nll_delta": self.nll_delta,
                "perplexity_ratio": self.perplexity_ratio, "perplexity": self.perplexity,
                "base_perplexity": self.base_perplexity, "exact": self.exact}

    def layer_rows(self) -> list[dict[str, Any]]:
        return [{"name": name, "option": option.label, "bits": option.bits, "group_size": option.group_size,
                 "sparsity": option.sparsity} for name, option in zip(self.layers, self.options, strict=True)]


class Planner:
    """Plans for every budget over one atlas (see the module docstring)."""

    def __init__(self, atlas: Atlas, mode: str = "proxy") -> None:
        require(mode in ("proxy", "measured"), f"mode must be proxy or measured, got {mode!r}")
        require(mode == "proxy" or atlas.measured, "this atlas has no measured costs; build it in measured mode")
        self.atlas, self.mode = atlas, mode
        self.costs = atlas.costs(mode)
        self.fit = atlas.fit(mode)
        self.bytes, self.nonzero = size_table(atlas.layers, atlas.menu, atlas.element_size)
        self.numel = sum(layer.numel for layer in atlas.layers)
        self._tables: dict[str, MultipleChoiceKnapsack] = {}

    def table(self, weight: str) -> MultipleChoiceKnapsack:
        """The knapsack over stored bytes ("bytes") or non-zero weights ("nonzero"), built on first use."""
        if weight not in self._tables:
            self._tables[weight] = MultipleChoiceKnapsack(self.bytes if weight == "bytes" else self.nonzero,
                                                          self.costs)
        return self._tables[weight]

    def capacity(self, budget: Budget) -> tuple[str, int]:
        """(which weight, its capacity) for a size or sparsity budget."""
        if budget.target == "avg_bits":
            return "bytes", math.floor(budget.value * self.numel / 8)
        if budget.target == "size_mb":
            return "bytes", math.floor(budget.value * 1e6) - self.atlas.fixed_bytes
        if budget.target == "sparsity":
            return "nonzero", math.floor((1 - budget.value) * self.numel)
        raise SpecError(f"{budget.target} is not a size or sparsity budget")

    def plan(self, budget: Budget) -> Plan:
        """The cheapest choice within ``budget``; SpecError (what the smallest plan takes) when none fits."""
        if budget.target == "max_ppl":
            return self._plan_for_perplexity(budget)
        weight, capacity = self.capacity(budget)
        table = self.table(weight)
        if not table.feasible(capacity):
            raise SpecError(too_small_message(budget, self.bytes, self.nonzero, self.atlas.fixed_bytes, self.numel))
        return self._plan(budget, table.solve(capacity).choice, table.exact)

    def _plan_for_perplexity(self, budget: Budget) -> Plan:
        base = self.atlas.base_perplexity
        require(budget.value > base, f"max_ppl {budget.value:g} is impossible: the base model's perplexity on the "
                                     f"atlas's held-out windows is already {base:.3f}; give a larger one")
        table = self.table("bytes")
        found = table.smallest_within(self.fit.inverse(math.log(budget.value / base)))
        if found is None:
            best = self._plan(budget, table.solve(int(self.bytes.max(axis=1).sum())).choice, table.exact)
            raise SpecError(f"max_ppl {budget.value:g} is below what this menu can reach: its best plan predicts "
                            f"{best.perplexity:.3f}; give a larger one or add wider options")
        return self._plan(budget, found.choice, table.exact)

    def _plan(self, budget: Budget, choice: tuple[int, ...], exact: bool) -> Plan:
        rows = np.arange(len(choice))
        planned = int(self.bytes[rows, list(choice)].sum())
        nonzero = int(self.nonzero[rows, list(choice)].sum())
        cost = float(self.costs[rows, list(choice)].sum())
        return Plan(budget, self.atlas.menu, [layer.name for layer in self.atlas.layers],
                    [self.atlas.menu.options[k] for k in choice], self.atlas.fixed_bytes + planned, planned,
                    8 * planned / self.numel, 1 - nonzero / self.numel, cost, self.fit(cost),
                    self.atlas.base_perplexity, exact)

    def curve(self, weight: str = "bytes") -> tuple[np.ndarray, np.ndarray]:
        """(capacity, predicted perplexity) over every capacity of the table: the whole trade-off at once."""
        capacities, costs = self.table(weight).best_costs()
        predicted = self.atlas.base_perplexity * np.exp([self.fit(float(c)) for c in costs])
        return capacities, predicted


def step_params(plan: Plan, technique: str, params: dict[str, Any], atlas_key: str, mode: str) -> dict[str, Any]:
    """The step's recipe mapping with the plan written in: the commonest option as the default, overrides
    by exact layer name for the rest, and ``planned`` recording the budget and the prediction."""
    common = Counter(plan.options).most_common(1)[0][0]
    resolved = {key: value for key, value in params.items() if key not in ("budget", "planned", "overrides")}
    overrides = []
    for name, option in zip(plan.layers, plan.options, strict=True):
        if option == common:
            continue
        if technique == "quantize":
            overrides.append({"pattern": name, "bits": option.bits, "group_size": option.group_size or 0})
        else:
            overrides.append({"pattern": name, "sparsity": option.sparsity})
    if technique == "quantize":
        resolved.update(bits=common.bits, group_size=common.group_size, symmetric=common.symmetric)
    else:
        resolved.update(sparsity=common.sparsity)
    resolved["overrides"] = overrides
    resolved["planned"] = {"budget": budget_mapping(plan.budget, plan.menu), "budget_label": plan.budget.label(),
                           "mode": mode, "atlas": atlas_key, "predicted": plan.predicted()}
    return resolved



def too_small_message(budget: Budget, table_bytes: np.ndarray, nonzero: np.ndarray, fixed: int, numel: int) -> str:
    """What the lightest choice of this menu takes, said for the budget's own unit (``numel``: the planned
    layers' weights)."""
    planned, kept = int(table_bytes.min(axis=1).sum()), int(nonzero.min(axis=1).sum())
    if budget.target == "sparsity":
        return (f"budget sparsity={budget.value:g} is beyond the sparsest option: the sparsest plan this menu allows "
                f"has {1 - kept / numel:.1%} sparsity (every layer at its sparsest level); give at most that, or add "
                "a higher level")
    reach = {"avg_bits": f"{8 * planned / numel:.3f} bits/weight",
             "size_mb": f"{(fixed + planned) / 1e6:.3f} MB"}[budget.target]
    return (f"budget {budget.target}={budget.value:g} is below the smallest option: the smallest plan this menu "
            f"allows takes {reach} (every layer at its lightest option); give at least that, or add a lighter option")


def check_budget_fits(layers: list[LayerShape], menu: Menu, budget: Budget, fixed: int, element: int) -> None:
    """Refuse, before any atlas is built, a size or sparsity budget that even the lightest choice exceeds."""
    if budget.target == "max_ppl":
        return
    table_bytes, nonzero = size_table(layers, menu, element)
    numel = sum(layer.numel for layer in layers)
    needed = {"avg_bits": (int(table_bytes.min(axis=1).sum()), math.floor(budget.value * numel / 8)),
              "size_mb": (fixed + int(table_bytes.min(axis=1).sum()), math.floor(budget.value * 1e6)),
              "sparsity": (int(nonzero.min(axis=1).sum()), math.floor((1 - budget.value) * numel))}[budget.target]
    if needed[0] > needed[1]:
        raise SpecError(too_small_message(budget, table_bytes, nonzero, fixed, numel))
