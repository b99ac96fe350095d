"""The Ray backend: trials as Ray tasks on a cluster, the driver the only writer of the store.

The driver commits a "running" row for a trial, submits the trial's recipe as a task (with the CPUs
and GPUs the sweep file gives a trial), and writes what the task returns into that row. Workers never
touch the driver's store: a worker runs the recipe with ``pipeline.run`` against a throwaway store of its
own and returns the row's fields. A worker process keeps the base model it loaded for the next trial it
runs. A trial whose task fails, or whose worker dies, becomes a failed row, and the sweep goes on.

With no address a Ray instance is started on this machine, every server bound to 127.0.0.1, with no
dashboard and no usage statistics; with an address (``auto`` or ``HOST:PORT``) the driver joins that
cluster. Ray is an optional extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.errors import CancelledError, SqueezeLabError
from core.progress import CancelFn
from core.store import METRIC_FIELDS, ResultRow, ResultStore
from core.sweep.spec import Resources
from core.sweep.trial import Trial

INSTALL_HINT = 'the Ray backend needs Ray: pip install -e ".[ray]" (or pip install "ray>=2.40"), or use --backend local'
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20  # trials return rows (kilobytes), not models
POLL_S = 0.5  # how often a wait looks at the cancel flag
# A Ray worker process runs many trials: the base model it loaded for the first is kept for the next
# (keyed by model, device and dtype; one entry, so a new model replaces the old one in memory).
_WORKER_BASE: dict[tuple, Any] = {}


def import_ray():
    """The ``ray`` module, or a refusal that says how to install it."""
    try:
        import ray
    except ImportError as error:
        raise SqueezeLabError(INSTALL_HINT) from error
    return ray


def start_local(num_cpus: int | None = None, num_gpus: int | None = None):
    """Start a Ray instance on this machine only: servers on 127.0.0.1, no dashboard, no usage statistics."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray's switch for an instance that is not part of a cluster: the node's address is the loopback one,
    # and Ray's gRPC servers then listen on 127.0.0.1 only. Read when ray is first imported.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray = import_ray()
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if getattr(constants, "ENABLE_RAY_CLUSTER", False):  # ray was imported before the switch was set: set it there
        constants.ENABLE_RAY_CLUSTER = False
    # the workers import this checkout's `core` however the driver found it (installed, or run from the checkout)
    paths = [str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get("PYTHONPATH")])]
    ray.init(num_cpus=num_cpus or os.cpu_count() or 1, num_gpus=num_gpus, include_dashboard=False,
             _node_ip_address="127.0.0.1", object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False,
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}})
    address = ray.util.get_node_ip_address()
    if address != "127.0.0.1":
        ray.shutdown()
        raise SqueezeLabError(f"the local Ray instance took address {address}, not 127.0.0.1, and was stopped; "
                              "this Ray version does not keep a one-machine instance on the loopback address")
    return ray


def connect(address: str | None) -> tuple[Any, bool]:
    """(ray, whether this call started the instance): an instance already running in this process is
    used as it is; else a local one (no address) or the cluster at ``address`` is joined."""
    ray = sys.modules.get("ray")  # not imported yet: a local instance must set its switches first
    if ray is not None and ray.is_initialized():
        return ray, False
    if address is None:
        return start_local(), True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = import_ray()
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise SqueezeLabError(f"cannot join the Ray cluster at {address!r}: {error}. Start one with `ray start "
                              "--head` (see the README) or leave --ray-address out for a local one") from error
    return ray, True


def run_trial(recipe: dict, threads: int) -> dict:
    """In a Ray worker: run one recipe and return its row's fields (or why it failed)."""
    import torch

    from core.models.loading import load
    from core.recipe import Recipe, pipeline

    torch.set_num_threads(max(1, threads))
    try:
        parsed = Recipe.from_dict(recipe)
        key = (parsed.model, parsed.device, parsed.dtype)
        reused = key in _WORKER_BASE
        if not reused:
            _WORKER_BASE.clear()
            _WORKER_BASE[key] = load(parsed.model, device=parsed.device, dtype=parsed.dtype)
        with tempfile.TemporaryDirectory(prefix="squeezelab-trial-") as scratch:
            row = pipeline.run(parsed, ResultStore(scratch), base=_WORKER_BASE[key])
        return {"ok": True, "row": row.to_dict(), "host": os.uname().nodename, "pid": os.getpid(),
                "base_reused": reused}
    except Exception as error:  # the driver writes it into the trial's row
        return {"ok": False, "error": f"{type(error).__name__}: {error}", "pid": os.getpid()}


class RayBackend:
    """Submits trials as Ray tasks and writes each one's row as it finishes."""

    def __init__(self, store: ResultStore, sweep: str, resources: Resources, address: str | None = None,
                 cancel: CancelFn | None = None) -> None:
        self.store, self.sweep, self.resources, self.cancel = store, sweep, resources, cancel
        self.ray, self._started = connect(address)
        self._task = self.ray.remote(num_cpus=resources.cpus, num_gpus=resources.gpus or None,
                                     max_retries=0)(run_trial)
        self._in_flight: dict[Any, tuple[Trial, str, float]] = {}  # object ref -> (trial, row id, submitted at)
        self.slots = self._slots()

    def _slots(self) -> int:
        """Trials that fit on the cluster at once, by the CPUs (and GPUs) a trial takes."""
        available = self.ray.cluster_resources()
        fits = available.get("CPU", 1) // self.resources.cpus
        if self.resources.gpus:
            fits = min(fits, available.get("GPU", 0) // self.resources.gpus)
        if fits < 1:
            raise SqueezeLabError(f"no node of the Ray cluster has the {self.resources.cpus:g} CPUs / "
                                  f"{self.resources.gpus:g} GPUs a trial asks for (resources: in the sweep file); "
                                  f"the cluster has {available.get('CPU', 0):g} CPUs, {available.get('GPU', 0):g} GPUs")
        return int(fits)

    def submit(self, trial: Trial) -> None:
        recipe = trial.recipe
        row_id = self.store.start(recipe.model, recipe.to_yaml(), recipe.device, sweep=self.sweep,
                                  sweep_params=trial.key)
        ref = self._task.remote(recipe.to_dict(), int(math.floor(self.resources.cpus)))
        self._in_flight[ref] = (trial, row_id, time.perf_counter())

    def wait(self) -> tuple[Trial, ResultRow]:
        """The next trial to finish, its row written: with the worker's figures, or failed."""
        ready: list = []
        while not ready:
            if self.cancel is not None and self.cancel():
                self.cancel_all()
                raise CancelledError("the sweep was cancelled; running trials were stopped")
            ready, _ = self.ray.wait(list(self._in_flight), num_returns=1, timeout=POLL_S)
        trial, row_id, submitted = self._in_flight.pop(ready[0])
        try:
            answer = self.ray.get(ready[0])
        except self.ray.exceptions.RayError as error:  # the worker died, or Ray could not run the task
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            answer = {"ok": False, "error": f"the Ray worker running this trial failed ({type(error).__name__}: "
                                            f"{first_line})"}
        return trial, self._write(row_id, answer, time.perf_counter() - submitted)

    def _write(self, row_id: str, answer: dict, round_trip_s: float) -> ResultRow:
        if not answer.get("ok"):
            self.store.fail(row_id, answer.get("error") or "the trial failed without a message")
            return self.store.get(row_id)
        row = answer["row"]
        metrics = {name: row[name] for name in METRIC_FIELDS if row.get(name) is not None}
        ray = {"host": answer.get("host"), "pid": answer.get("pid"), "base_reused": answer.get("base_reused"),
               "round_trip_s": round_trip_s}
        details = {**row.get("details", {}), "ray": ray}
        return self.store.finish(row_id, details=details, **metrics)

    def cancel_all(self) -> None:
        """Stop every running trial (force-killing its worker) and mark its row cancelled."""
        for ref, (_, row_id, _) in list(self._in_flight.items()):
            self.ray.cancel(ref, force=True)
            self.store.fail(row_id, "cancelled with the sweep", status="cancelled")
        self._in_flight.clear()

    def close(self) -> None:
        if self._in_flight:
            self.cancel_all()
        if self._started:
            self.ray.shutdown()
