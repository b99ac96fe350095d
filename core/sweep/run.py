"""``run_sweep``: check every trial, measure the base once, run what is not done yet, report the front.

The order of a run:

1. every trial's recipe is built and validated (a grid's all of them; a search's space at its ends and
   choices), so a bad path or value is refused before any model is loaded;
2. the sweep file is kept in ``<results>/sweeps/<name>/sweep.json``; a later run of the same name must
   have the same base recipe (it may extend the grid or the search budget);
3. the base model is measured once, as the sweep's row with no parameters (a resumed sweep reuses it);
4. the trials without a finished row run, on the local backend or on Ray, up to the limits given;
5. the report: one row per parameter set, the Pareto front, the acceptable trials and the best.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.checks import is_count, is_number, require
from core.errors import SqueezeLabError
from core.models.source import LoadedModel
from core.progress import CancelFn, ProgressFn
from core.recipe.recipe import Recipe
from core.store import ResultRow, ResultStore
from core.sweep.cost import CostEstimate, estimate_cost
from core.sweep.grid import GridPlan, grid_trials
from core.sweep.report import SweepReport, latest_per_params, summarize
from core.sweep.spec import SweepSpec
from core.sweep.trial import Trial, base_trial, make_trial, params_key

BACKENDS = ("local", "ray")
SPEC_FILE = "sweep.json"
MAX_VIOLATION = 1e12  # a missing metric's constraint violation: "far outside", finite for the sampler's sums


@dataclass(frozen=True)
class TrialEvent:
    """A trial that just finished in this run: its row, and how far the run is."""

    trial: Trial
    row: ResultRow
    finished: int  # trials finished in this run, this one included
    planned: int  # trials this run means to run (after skipping the done ones and applying the limits)


def sweep_folder(store: ResultStore, name: str) -> Path:
    """Where a sweep keeps its file and (for a search) its Optuna study: beside the results database."""
    return store.root / "sweeps" / name


def check_trials(spec: SweepSpec) -> list[Trial]:
    """Every trial of a grid, validated; for a search, trials at each end of each range and each choice
    (validated, not run), so that a path or value the recipe refuses is refused now."""
    if spec.search is None:
        return grid_trials(spec)
    for param in spec.search.space:
        for value in param.values:
            make_trial(spec.base, {param.path: value})
    return []


def _prepare_folder(store: ResultStore, spec: SweepSpec) -> Path:
    """Refuse a sweep name already used with another base recipe or kind; keep this sweep file beside the results."""
    folder = sweep_folder(store, spec.name)
    stored_file = folder / SPEC_FILE
    if stored_file.is_file():
        stored = json.loads(stored_file.read_text(encoding="utf-8"))
        require(Recipe.from_dict(stored.get("base") or {}).to_dict() == spec.base_recipe.to_dict(),
                f"sweep {spec.name!r} was started with another base recipe (kept in {stored_file}); its trials would "
                "not compare with these. Give this sweep another name.")
        stored_kind = "search" if "search" in stored else "grid"
        require(stored_kind == spec.kind, f"sweep {spec.name!r} was started as a {stored_kind}, this file is a "
                                          f"{spec.kind}; give this sweep another name")
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / f".{SPEC_FILE}.{os.getpid()}"
    scratch.write_text(json.dumps(spec.to_dict(), indent=2), encoding="utf-8")
    os.replace(scratch, stored_file)  # atomic: a killed run leaves the old file or the new one
    return folder


def make_backend(name: str, store: ResultStore, spec: SweepSpec, ray_address: str | None = None,
                 base: LoadedModel | None = None, on_progress: ProgressFn | None = None,
                 cancel: CancelFn | None = None):
    """The backend that runs the trials: ``local`` (this process) or ``ray`` (tasks on a Ray cluster)."""
    require(name in BACKENDS, f"unknown backend {name!r}; choose {' or '.join(BACKENDS)}")
    require(ray_address is None or name == "ray", "--ray-address goes with --backend ray")
    if name == "ray":
        from core.sweep.ray_backend import RayBackend

        require(base is None, "the Ray backend loads the model on its workers; pass no loaded base")
        return RayBackend(store, spec.name, spec.resources, ray_address, cancel)
    from core.sweep.local import LocalBackend

    return LocalBackend(store, spec.name, base, on_progress, cancel)


def _finished(rows: list[ResultRow]) -> dict[str, ResultRow]:
    return {key: row for key, row in latest_per_params(rows).items() if row.status == "ok"}


def _base_row(spec: SweepSpec, runner: Any, done: dict[str, ResultRow]) -> ResultRow:
    """The sweep's measurement of the base model: the stored one, or measured now (once per sweep)."""
    trial = base_trial(spec.base)
    if trial.key in done:
        return done[trial.key]
    runner.submit(trial)
    _, row = runner.wait()
    if row.status != "ok":
        raise SqueezeLabError(f"measuring the base model failed, so the sweep cannot start: {row.error}")
    return row


def _violations(spec: SweepSpec, base: ResultRow) -> Callable[[ResultRow], dict[str, float]]:
    def violations(row: ResultRow) -> dict[str, float]:
        return {c.metric: min(MAX_VIOLATION, c.violation(getattr(row, c.metric), getattr(base, c.metric)))
                for c in spec.constraints}

    return violations


@dataclass
class Limits:
    """When a run stops starting trials: after ``trials`` of them, or ``minutes`` after it began."""

    trials: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        require(self.trials is None or is_count(self.trials, 1), f"max trials must be >= 1, got {self.trials!r}")
        require(self.minutes is None or (is_number(self.minutes) and self.minutes > 0),
                f"max minutes must be a number > 0, got {self.minutes!r}")

    def reason(self, started: int, elapsed_s: float) -> str | None:
        if self.trials is not None and started >= self.trials:
            return f"the limit of {self.trials} trial{'s' * (self.trials != 1)}"
        if self.minutes is not None and elapsed_s >= 60 * self.minutes:
            return f"the limit of {self.minutes:g} minutes"
        return None


def _drive(plan: Any, runner: Any, limits: Limits, on_trial: Callable[[TrialEvent], None] | None) -> dict[str, Any]:
    """Keep the backend's slots busy with the plan's trials until it is done or a limit is reached."""
    started_at, started, finished, failed, in_flight, stopped = time.monotonic(), 0, 0, 0, 0, None
    planned = min(plan.remaining(), limits.trials or plan.remaining())
    while True:
        while in_flight < runner.slots:
            stopped = limits.reason(started, time.monotonic() - started_at)
            trial = None if stopped else plan.next()
            if trial is None:
                break
            runner.submit(trial)
            started, in_flight = started + 1, in_flight + 1
        if not in_flight:
            break
        trial, row = runner.wait()
        in_flight, finished, failed = in_flight - 1, finished + 1, failed + (row.status != "ok")
        plan.record(trial, row)
        if on_trial is not None:
            on_trial(TrialEvent(trial, row, finished, max(planned, finished)))
    left = plan.remaining()
    return {"ran": started, "failed": failed, "skipped": plan.skipped, "left": left,
            "stopped": stopped if left else None, "wall_s": time.monotonic() - started_at}


def run_sweep(spec: SweepSpec, store: ResultStore, backend: str = "local", ray_address: str | None = None,
              max_trials: int | None = None, max_minutes: float | None = None, base: LoadedModel | None = None,
              on_trial: Callable[[TrialEvent], None] | None = None, on_progress: ProgressFn | None = None,
              cancel: CancelFn | None = None) -> SweepReport:
    """Run (or resume) a sweep and return its report; every trial is a row in ``store`` tagged with the sweep.

    ``base`` (local backend only) is an already loaded base model to reuse; it is never modified.
    """
    limits = Limits(max_trials, max_minutes)
    trials = check_trials(spec)
    folder = _prepare_folder(store, spec)
    runner = make_backend(backend, store, spec, ray_address, base, on_progress, cancel)
    plan = None
    try:
        done = _finished(store.sweep_rows(spec.name))
        base_row = _base_row(spec, runner, done)
        if spec.search is None:
            plan = GridPlan(trials, done)
        else:
            from core.sweep.search import SearchPlan

            plan = SearchPlan(spec, folder, done, _violations(spec, base_row))
        stats = _drive(plan, runner, limits, on_trial)
    finally:
        if plan is not None:
            plan.abandon()
        runner.close()
    report = summarize(spec.name, store.sweep_rows(spec.name), spec.objectives, spec.constraints)
    report.run = {**stats, "backend": backend}
    return report


def stored_sweep(store: ResultStore, name: str) -> SweepSpec | None:
    """The sweep file last run under ``name`` (kept beside the results), or None when there is none."""
    path = sweep_folder(store, name) / SPEC_FILE
    if not path.is_file():
        return None
    return SweepSpec.from_dict(json.loads(path.read_text(encoding="utf-8")))


def sweep_names(store: ResultStore) -> list[str]:
    """The sweeps in ``store``, the most recently active first."""
    return list(dict.fromkeys(row.sweep for row in reversed(store.sweep_rows())))


def sweep_report(spec: SweepSpec, store: ResultStore) -> SweepReport:
    """The report of what ``store`` holds of this sweep, without running anything."""
    return summarize(spec.name, store.sweep_rows(spec.name), spec.objectives, spec.constraints)


def sweep_cost(spec: SweepSpec, store: ResultStore, max_trials: int | None = None) -> CostEstimate:
    """What running the sweep now would cost: its trials not yet done (and the base measurement if it has none)."""
    done = _finished(store.sweep_rows(spec.name))
    if spec.search is None:
        todo = [t for t in grid_trials(spec) if t.key not in done]
    else:
        told = sum(1 for key in done if key != params_key({}))
        todo = [make_trial(spec.base, {})] * max(0, spec.search.trials - told)
    todo = todo[:max_trials] if max_trials else todo
    base = base_trial(spec.base)
    return estimate_cost(store.list(status="ok"), ([base] if base.key not in done else []) + todo)
