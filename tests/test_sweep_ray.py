"""The Ray backend on a local Ray instance of this machine (127.0.0.1 only, 2 CPUs, no dashboard), started
once for the module and stopped at its end: the same trials give the same perplexities as the local
backend, the driver alone writes the store, and a worker killed mid-trial leaves a failed row."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time

import psutil
import pytest

from core.store import ResultStore
from core.sweep import SweepSpec, run_sweep

# find_spec, not an import: the local instance sets Ray's switches before ray is first imported
pytestmark = [pytest.mark.ray, pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                                  reason='needs the ray extra: pip install -e ".[ray]"')]

TINY_EVAL = {"max_windows": 2, "seqlen": 64, "latency": False}
WORKER_TITLE = "ray::run_trial"  # Ray names a worker process after the task it is running


def rtn_grid(name: str, bits: list[int], groups: list[int]) -> SweepSpec:
    return SweepSpec.from_dict({
        "sweep": name,
        "base": {"model": "sample:teacher", "steps": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}],
                 "evaluation": TINY_EVAL},
        "grid": {"steps.0.quantize.bits": bits, "steps.0.quantize.group_size": groups},
        "resources": {"cpus": 1},
    })


@pytest.fixture(scope="module")
def local_ray():
    from core.sweep.ray_backend import start_local

    started = start_local(num_cpus=2)
    yield started
    started.shutdown()


def by_params(rows) -> dict[str, float]:
    return {row.sweep_params: row.perplexity for row in rows}


def listening_addresses() -> set[str]:
    """The addresses the Ray processes under this one listen on."""
    found = set()
    for process in psutil.Process().children(recursive=True):
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return found


def test_the_local_instance_listens_on_the_loopback_address_only(local_ray):
    assert local_ray.util.get_node_ip_address() == "127.0.0.1"
    addresses = listening_addresses()
    assert addresses and addresses <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, addresses


def test_ray_runs_the_grid_with_the_local_backends_perplexities(local_ray, tmp_path):
    store = ResultStore(tmp_path)
    local = run_sweep(rtn_grid("local", [2, 4], [32, 64]), store)
    remote = run_sweep(rtn_grid("ray", [2, 4], [32, 64]), store, backend="ray")
    assert remote.run["ran"] == 4 and remote.run["failed"] == 0
    assert by_params(remote.trials) == pytest.approx(by_params(local.trials), rel=1e-9)
    assert remote.base.perplexity == pytest.approx(local.base.perplexity, rel=1e-9)
    rows = store.sweep_rows("ray")
    assert all(row.pid == os.getpid() for row in rows)  # the driver wrote every row
    workers = {row.details["ray"]["pid"] for row in rows}
    assert os.getpid() not in workers  # ... of trials that ran in worker processes
    assert any(row.details["ray"]["base_reused"] for row in rows)  # a worker loaded the base once for several
    assert set(remote.pareto) <= {r.id for r in remote.trials}


def kill_first_busy_worker(stop: threading.Event, killed: list[int]) -> None:
    """Watch this process's descendants and SIGKILL the first Ray worker seen running a trial."""
    while not stop.is_set() and not killed:
        for process in psutil.Process().children(recursive=True):
            try:
                if process.cmdline() and process.cmdline()[0].startswith(WORKER_TITLE):
                    process.kill()
                    killed.append(process.pid)
                    return
            except psutil.Error:  # it ended while being looked at
                continue
        time.sleep(0.02)


def test_a_worker_killed_mid_trial_leaves_a_failed_row_and_the_sweep_completes(local_ray, tmp_path):
    store = ResultStore(tmp_path)
    spec = rtn_grid("killed", [2, 3, 4, 8], [32])
    run_sweep(rtn_grid("killed", [8], [64]), store, backend="ray")  # the base row first: the kill hits a trial
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=kill_first_busy_worker, args=(stop, killed), daemon=True)
    watcher.start()
    try:
        report = run_sweep(spec, store, backend="ray")
    finally:
        stop.set()
        watcher.join(10)
    assert len(killed) == 1
    failed = [row for row in report.trials if row.status == "failed"]
    assert len(failed) == 1 and "Ray worker" in failed[0].error
    finished = [row for row in report.trials if row.status == "ok"]
    assert len(finished) == 4  # the three other trials of the grid and the first sweep's one
    assert all(row.status != "running" for row in store.sweep_rows("killed"))
    params = {json.loads(row.sweep_params)["steps.0.quantize.bits"] for row in report.trials}
    assert params == {2, 3, 4, 8}
