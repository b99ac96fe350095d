"""What a sweep found, from its rows in the store: the trials, the Pareto front, the acceptable ones and the best.

Every trial is an ordinary result row tagged with the sweep's name and its parameters; the base model's
measurement is the row whose parameters are empty. A parameter set tried more than once (a failed trial
run again on resume) counts by its newest finished row, else its newest row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.store import ResultRow
from core.sweep.constraint import Constraint
from core.sweep.pareto import pareto_indices
from core.sweep.trial import params_key


@dataclass
class SweepReport:
    """A sweep's trials and what they add up to; ``to_dict`` is what ``squeezelab sweep --json`` prints."""

    name: str
    objectives: dict[str, str]
    constraints: tuple[Constraint, ...]
    base: ResultRow | None
    trials: list[ResultRow]  # one per parameter set, oldest first
    pareto: list[str] = field(default_factory=list)  # ids of the finished trials no other beats on every objective
    acceptable: list[str] = field(default_factory=list)  # ids of the finished trials inside every constraint
    best: str | None = None  # the smallest acceptable trial (size, then perplexity)
    run: dict[str, Any] = field(default_factory=dict)  # what this invocation did: ran, skipped, left, stopped

    def base_value(self, metric: str) -> float | None:
        return getattr(self.base, metric) if self.base is not None and self.base.status == "ok" else None

    def row(self, result_id: str) -> ResultRow:
        return next(row for row in self.trials if row.id == result_id)

    def to_dict(self) -> dict[str, Any]:
        constraint = {c.metric: {"expression": c.text, "bound": c.bound(self.base_value(c.metric))}
                      for c in self.constraints}
        return {"sweep": self.name, "trials": [row.to_dict() for row in self.trials], "pareto": self.pareto,
                "best": self.best, "acceptable": self.acceptable, "objectives": self.objectives,
                "constraint": constraint, "base": self.base.to_dict() if self.base is not None else None,
                "run": self.run}


def trial_params(row: ResultRow) -> dict[str, Any]:
    """The parameters of a sweep row (empty for the base measurement)."""
    return json.loads(row.sweep_params) if row.sweep_params else {}


def latest_per_params(rows: list[ResultRow]) -> dict[str, ResultRow]:
    """params key -> the row that counts for it: the newest "ok" one, else the newest of any status."""
    chosen: dict[str, ResultRow] = {}
    for row in sorted(rows, key=lambda r: (r.created, r.id)):  # oldest first: a newer row replaces an older one
        key = params_key(trial_params(row))
        held = chosen.get(key)
        if held is None or row.status == "ok" or held.status != "ok":
            chosen[key] = row
    return chosen


def summarize(name: str, rows: list[ResultRow], objectives: dict[str, str],
              constraints: tuple[Constraint, ...] = ()) -> SweepReport:
    """The report of a sweep from all its rows (``ResultStore.sweep_rows(name)``)."""
    chosen = latest_per_params(rows)
    base = chosen.pop(params_key({}), None)
    trials = sorted(chosen.values(), key=lambda r: (r.created, r.id))
    report = SweepReport(name, dict(objectives), tuple(constraints), base, trials)
    finished = [row for row in trials if row.status == "ok"]
    points = [tuple(getattr(row, metric) for metric in objectives) for row in finished]
    lower = [sense == "min" for sense in objectives.values()]
    report.pareto = [finished[i].id for i in pareto_indices(points, lower)]
    report.acceptable = [row.id for row in finished
                         if all(c.accepts(getattr(row, c.metric), report.base_value(c.metric)) for c in constraints)]
    candidates = [row for row in finished if row.id in set(report.acceptable) and row.size_bytes is not None]
    if candidates:
        best = min(candidates, key=lambda r: (r.size_bytes, r.perplexity if r.perplexity is not None else float("inf")))
        report.best = best.id
    return report
