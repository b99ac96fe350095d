"""The local backend: trials one after another in this process, the base model loaded once.

Each trial is ``core.recipe.pipeline.run`` on the one loaded base (which deep-copies it before any
step), so a trial is exactly what ``squeezelab run`` of its recipe records, tagged with the sweep.
A trial that fails becomes a failed row and the sweep goes on; a cancel stops the sweep.
"""

from __future__ import annotations

from datetime import UTC, datetime

from core.errors import CancelledError
from core.models.loading import load
from core.models.source import LoadedModel
from core.progress import CancelFn, ProgressFn
from core.recipe import pipeline
from core.store import ResultRow, ResultStore
from core.sweep.trial import Trial


def failed_row(store: ResultStore, sweep: str, trial: Trial, error: BaseException, since: str) -> ResultRow:
    """The row a failed trial left (created at or after ``since``), or a failed row written now when it left none."""
    rows = [row for row in store.sweep_rows(sweep)
            if row.sweep_params == trial.key and row.created >= since and row.status != "ok"]
    if rows:
        return rows[-1]
    run_id = store.start(trial.recipe.model, trial.recipe.to_yaml(), trial.recipe.device, sweep=sweep,
                         sweep_params=trial.key)
    store.fail(run_id, f"{type(error).__name__}: {error}")
    return store.get(run_id)


class LocalBackend:
    """Runs each submitted trial in this process when ``wait`` is called."""

    slots = 1  # one trial at a time: the model's matmuls already use every thread

    def __init__(self, store: ResultStore, sweep: str, base: LoadedModel | None = None,
                 on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> None:
        self.store, self.sweep, self._base = store, sweep, base
        self.on_progress, self.cancel = on_progress, cancel
        self._pending: list[Trial] = []

    def _loaded(self, trial: Trial) -> LoadedModel:
        """The base model, loaded on first use and reused by every trial."""
        if self._base is None:
            recipe = trial.recipe
            self._base = load(recipe.model, device=recipe.device, dtype=recipe.dtype)
        return self._base

    def submit(self, trial: Trial) -> None:
        self._pending.append(trial)

    def wait(self) -> tuple[Trial, ResultRow]:
        """Run the oldest submitted trial; its row, failed when the trial raised."""
        trial = self._pending.pop(0)
        since = datetime.now(UTC).isoformat(timespec="microseconds")
        try:
            row = pipeline.run(trial.recipe, self.store, base=self._loaded(trial), on_progress=self.on_progress,
                               cancel=self.cancel, sweep=self.sweep, sweep_params=trial.key)
        except (CancelledError, KeyboardInterrupt):
            raise
        except Exception as error:  # a trial's failure is its row's; the sweep goes on with the next
            row = failed_row(self.store, self.sweep, trial, error, since)
        return trial, row

    def cancel_all(self) -> None:
        self._pending.clear()

    def close(self) -> None:
        self._pending.clear()
