"""A multi-objective search with Optuna's ask/tell interface; the study lives in a journal file beside the results.

Optuna proposes the parameters (TPE, NSGA-II or random sampling), SqueezeLab runs each proposal as an
ordinary trial and tells Optuna the measured objectives. The study is stored in
``<results>/sweeps/<name>/study.log`` (Optuna's append-only journal, which a killed process cannot
leave half-written), so running the sweep again continues the same study:

* a trial the killed process had asked for but never told is marked failed in the study and its
  parameters are queued again, so the next proposal is exactly that trial;
* a proposal whose parameters already have a finished row (from this run or an earlier one, told or
  not) is answered from that row without running anything;
* the sampler's seed is the sweep's seed plus the number of trials already in the study, so a resumed
  search draws new proposals instead of repeating its first ones.

A constraint (``perplexity <= 1.10 * base``) is told with each trial (``Trial.set_constraint``): the TPE
and NSGA-II samplers then prefer proposals near feasible trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core.checks import require
from core.store import ResultRow
from core.sweep.spec import ParamRange, SearchSpec, SweepSpec
from core.sweep.trial import Trial, make_trial

STUDY_FILE = "study.log"
FAILED_ROW = "failed_row"  # user attribute of a trial that ran and failed (it counts against the budget)
RESULT_ID = "result_id"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would drown our own
    return optuna


def distribution(param: ParamRange):
    """The Optuna distribution of one dimension of the space."""
    optuna = _optuna()
    if param.kind == "int":
        return optuna.distributions.IntDistribution(int(param.values[0]), int(param.values[1]),
                                                    step=int(param.step or 1), log=param.log)
    if param.kind == "float":
        return optuna.distributions.FloatDistribution(float(param.values[0]), float(param.values[1]),
                                                      step=param.step, log=param.log)
    return optuna.distributions.CategoricalDistribution(list(param.values))


def sampler(search: SearchSpec, seed: int):
    """TPE (multi-objective), NSGA-II or random sampling; constraint values come from each trial's attributes."""
    samplers = _optuna().samplers
    if search.sampler == "random":
        return samplers.RandomSampler(seed=seed)
    if search.sampler == "nsga2":
        population = max(4, min(50, search.trials // 3))  # several generations fit in the budget
        return samplers.NSGAIISampler(population_size=population, seed=seed)
    startup = max(2, min(10, search.trials // 3))  # random proposals before TPE models the results
    return samplers.TPESampler(n_startup_trials=startup, seed=seed, multivariate=True)


class SearchPlan:
    """The trials of a search, proposed one at a time by the study, until its budget is spent."""

    def __init__(self, spec: SweepSpec, folder: Path, done: dict[str, ResultRow], constraint_values) -> None:
        require(spec.search is not None, "a search plan needs a sweep with `search:`")
        optuna = _optuna()
        self.spec, self.search, self.done = spec, spec.search, dict(done)  # grows as trials finish
        self.constraint_values = constraint_values  # row -> {metric: violation} (<= 0: satisfied)
        self._distributions = {p.path: distribution(p) for p in self.search.space}
        folder.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(folder / STUDY_FILE)))
        directions = ["minimize" if sense == "min" else "maximize" for sense in self.search.objectives.values()]
        self.study = optuna.create_study(storage=storage, study_name=spec.name, directions=directions,
                                         load_if_exists=True)
        stored = [d.name.lower() for d in self.study.directions]
        require(stored == directions, f"sweep {spec.name!r} has a stored study with objectives "
                                      f"{'/'.join(stored)}, not {'/'.join(directions)}; keep the objectives or "
                                      "give the sweep another name")
        self._requeue_interrupted()
        self.study.sampler = sampler(self.search, self.search.seed + len(self.study.trials))
        self._asked: dict[int, Any] = {}
        self.skipped = 0  # proposals answered from rows already in the store

    def _requeue_interrupted(self) -> None:
        """Trials a killed run asked for but never told: failed in the study, their parameters asked again."""
        states = self._optuna_states()
        for frozen in self.study.get_trials(deepcopy=False, states=(states.RUNNING,)):
            self.study.tell(frozen.number, state=states.FAIL)
            self.study.enqueue_trial(dict(frozen.params), user_attrs={"resumes": frozen.number})

    @staticmethod
    def _optuna_states():
        return _optuna().trial.TrialState

    def counted(self) -> int:
        """Trials that count against the budget: finished ones and ones that ran and failed."""
        states = self._optuna_states()
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state == states.COMPLETE or (t.state == states.FAIL and t.user_attrs.get(FAILED_ROW)))

    def remaining(self) -> int:
        return max(0, self.search.trials - self.counted() - len(self._asked))

    def next(self) -> Trial | None:
        """The next trial to run, or None when the budget is spent; proposals already measured are told here."""
        while self.remaining() > 0:
            asked = self.study.ask(fixed_distributions=self._distributions)
            params = {p.path: asked.params[p.path] for p in self.search.space}
            trial = make_trial(self.spec.base, params, asked.number)
            self._asked[asked.number] = asked
            row = self.done.get(trial.key)
            if row is None:
                return trial
            self.skipped += 1
            self.record(trial, row)
        return None

    def record(self, trial: Trial, row: ResultRow) -> None:
        """Tell the study how the trial ended (its objectives, or failed)."""
        asked = self._asked.pop(trial.number)
        states = self._optuna_states()
        asked.set_user_attr(RESULT_ID, row.id)
        if row.status == "ok":
            self.done[trial.key] = row  # a later proposal of the same parameters is answered from this row
        values = [getattr(row, metric) for metric in self.search.objectives]
        if row.status != "ok" or not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            asked.set_user_attr(FAILED_ROW, row.id)
            self.study.tell(asked, state=states.FAIL)
            return
        for metric, violation in self.constraint_values(row).items():
            asked.set_constraint(metric, violation)  # <= 0: satisfied; TPE and NSGA-II prefer feasible trials
        self.study.tell(asked, [float(v) for v in values])

    def abandon(self) -> None:
        """Trials asked but not run (the run stopped): failed in the study and queued again for the next run."""
        states = self._optuna_states()
        for asked in list(self._asked.values()):
            self.study.tell(asked, state=states.FAIL)
            self.study.enqueue_trial(dict(asked.params), user_attrs={"resumes": asked.number})
        self._asked.clear()
