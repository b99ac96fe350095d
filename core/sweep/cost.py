"""What a sweep will cost before it starts: its trials times the time each took before.

A trial's time is guessed from earlier finished runs of the same method family on the same model
(``wall_s`` of their rows: the median, preferring runs measured on the same number of windows and
window length). A family never run before on that model has no guess, and the estimate says how many
trials that leaves out rather than inventing a figure.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from core.store import ResultRow
from core.sweep.trial import Trial, method_family

RECENT_RUNS = 20  # the newest runs of a family that a guess is made from


@dataclass(frozen=True)
class FamilyCost:
    """The guess for one method family: seconds a trial (None: no earlier run) and the runs it comes from."""

    family: str
    trials: int
    seconds: float | None
    runs: int


@dataclass(frozen=True)
class CostEstimate:
    """The sweep's trials still to run and the time they should take."""

    trials: int
    families: tuple[FamilyCost, ...] = field(default_factory=tuple)

    @property
    def seconds(self) -> float | None:
        """Total seconds of the trials with a guess (None when none has one)."""
        known = [f.seconds * f.trials for f in self.families if f.seconds is not None]
        return sum(known) if known else None

    @property
    def unknown(self) -> int:
        """Trials of families never run before on this model."""
        return sum(f.trials for f in self.families if f.seconds is None)

    def describe(self) -> str:
        """'12 trials, about 4.2 min (rtn: 6 x 0.5 s from 14 runs; gptq: 6 x 38 s from 3 runs)'."""
        if not self.trials:
            return "no trials left to run"
        parts = [f"{f.family}: {f.trials} x " + (f"{_duration(f.seconds)} from {f.runs} earlier run"
                                                  f"{'s' * (f.runs != 1)}" if f.seconds is not None
                                                  else "no earlier run")
                 for f in self.families]
        total = self.seconds
        head = f"{self.trials} trial{'s' * (self.trials != 1)}"
        if total is not None:
            head += f", about {_duration(total)}"
            head += f" plus {self.unknown} without an estimate" if self.unknown else ""
        return f"{head} ({'; '.join(parts)})"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _guess(runs: list[ResultRow], windows: int | None, seqlen: int | None) -> tuple[float | None, int]:
    same = [r for r in runs if ((r.details or {}).get("windows"), (r.details or {}).get("seqlen")) == (windows, seqlen)]
    chosen = (same or runs)[:RECENT_RUNS]
    times = [r.wall_s for r in chosen if r.wall_s is not None]
    return (statistics.median(times), len(times)) if times else (None, 0)


def estimate_cost(history: list[ResultRow], trials: list[Trial]) -> CostEstimate:
    """The cost of running ``trials`` from the finished rows in ``history`` (newest first, as the store lists)."""
    by_family: dict[str, list[Trial]] = {}
    for trial in trials:
        by_family.setdefault(trial.family, []).append(trial)
    families = []
    for family, members in by_family.items():
        recipe = members[0].recipe
        runs = [row for row in history if row.status == "ok" and row.model == recipe.model
                and method_family((row.details or {}).get("method")) == family]
        seconds, count = _guess(runs, recipe.evaluation.max_windows, recipe.evaluation.seqlen)
        families.append(FamilyCost(family, len(members), seconds, count))
    return CostEstimate(len(trials), tuple(families))
