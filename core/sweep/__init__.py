"""Sweeps: many recipes from one, as a grid or an Optuna search, run locally or on a Ray cluster.

* ``spec``        - ``SweepSpec`` (the sweep file: name, base recipe, grid or search, constraint, resources)
                    and ``load_sweep``.
* ``paths``       - dotted paths into a recipe mapping (``steps.0.quantize.bits``).
* ``constraint``  - ``"<= 1.10 * base"`` parsed by a small grammar (never ``eval``).
* ``trial``       - ``Trial``: parameters, the recipe they make, the key a resumed sweep finds it by.
* ``grid``        - the cartesian product (or a union of products) and its plan.
* ``search``      - the Optuna study (ask / tell), stored beside the results so a resumed search continues it.
* ``pareto``      - the Pareto front (pure).
* ``report``      - ``SweepReport``: the trials, the front, the acceptable ones and the best, from the store's rows.
* ``cost``        - what a sweep will cost, from earlier runs of the same methods.
* ``local``, ``ray_backend`` - where the trials run; the driver is the only writer of the store.
* ``run``         - ``run_sweep``: validate, measure the base once, run what is not done, report.
"""

from core.sweep.constraint import Constraint, parse_constraint
from core.sweep.cost import CostEstimate
from core.sweep.grid import expand_grid
from core.sweep.pareto import pareto_indices
from core.sweep.report import SweepReport, summarize, trial_params
from core.sweep.run import BACKENDS, TrialEvent, run_sweep, stored_sweep, sweep_cost, sweep_names, sweep_report
from core.sweep.spec import SweepSpec, load_sweep
from core.sweep.trial import Trial, short_label

__all__ = ["BACKENDS", "Constraint", "CostEstimate", "SweepReport", "SweepSpec", "Trial", "TrialEvent",
           "expand_grid", "load_sweep", "parse_constraint", "pareto_indices", "run_sweep", "short_label",
           "stored_sweep", "summarize", "sweep_cost", "sweep_names", "sweep_report", "trial_params"]
