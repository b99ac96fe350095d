"""Two browser sessions share one cached base model: a job in one must leave the other's model bit-identical.

``ui.cache.load_base`` is an ``st.cache_resource``: every session (and the background worker) gets the
same ``LoadedModel`` object. A job that pruned it in place, instead of its own copy, would silently
prune the model every other user is looking at. Two ``AppTest`` sessions run in this process and
share that cache exactly as two browser tabs on one server do.
"""

from __future__ import annotations

import hashlib
import itertools
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn

from core.store import ResultStore
from ui import cache, jobs

APP = str(Path(__file__).resolve().parent.parent / "app.py")
MODEL = "sample:student"
TIMEOUT_S = 60
JOB_TIMEOUT_S = 180


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "results"
    monkeypatch.setenv("SQUEEZELAB_RESULTS_DIR", str(folder))
    return folder


def fingerprint(model: nn.Module) -> str:
    """SHA-256 over the name, dtype, shape and raw bytes of every parameter and buffer (tied ones under each name)."""
    digest = hashlib.sha256()
    tensors = itertools.chain(model.named_parameters(remove_duplicate=False),
                              model.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def session() -> AppTest:
    """A new browser session on the sample student, as a tab opened on ``/?model=sample:student``."""
    app = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    app.query_params["model"] = MODEL
    app.run()
    assert not app.exception and app.selectbox(key="model").value == MODEL
    return app


def generated(app: AppTest) -> str:
    """The Model page's greedy continuation: it runs on the cached base model itself, not a copy."""
    next(b for b in app.button if b.label == "Generate (greedy)").click().run()
    assert not app.exception
    return app.code[0].value


def test_a_job_in_one_session_leaves_the_other_sessions_model_bit_identical(results_dir: Path) -> None:
    pruner, watcher = session(), session()
    base = cache.load_base(MODEL)
    before = fingerprint(base.model)
    seen_before = generated(watcher.switch_page("pages/model.py").run())

    pruner.number_input(key="eval_seqlen").set_value(64)  # tiny evaluation: the job takes seconds
    pruner.number_input(key="eval_windows").set_value(2)
    pruner.toggle(key="eval_latency").set_value(False)
    pruner.run().switch_page("pages/prune.py").run()
    pruner.selectbox(key="prune_method").select("magnitude")
    pruner.radio(key="prune_amount_mode").set_value("sparsity")
    pruner.selectbox(key="prune_pattern").select("unstructured")
    pruner.slider(key="prune_sparsity").set_value(0.9)
    next(b for b in pruner.run().button if b.label == "Run").click().run()
    assert not pruner.exception and not pruner.error
    job = jobs.worker().wait(pruner.query_params["job"], JOB_TIMEOUT_S)
    assert job is not None and job.status == "done", job and (job.status, job.error)

    row = ResultStore(results_dir).get(job.result_id)
    assert row.model == MODEL and row.nonzero_params < 0.5 * row.params  # the job's copy really was pruned
    assert cache.load_base(MODEL) is base  # both sessions still get this very object from the cache
    assert fingerprint(base.model) == before, "the job changed the cached base model the other session uses"
    assert generated(watcher.run()) == seen_before  # and the other session sees the same model as before
    assert "job" not in watcher.query_params  # the job is the pruner's alone


def test_the_fingerprint_notices_a_single_changed_weight() -> None:
    """The check above can fail: flipping one weight of a copy changes its fingerprint."""
    model = cache.load_base(MODEL).model
    copy = deepcopy(model)
    assert fingerprint(copy) == fingerprint(model)
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1.0
    assert fingerprint(copy) != fingerprint(model)
