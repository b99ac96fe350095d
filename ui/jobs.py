"""One process-wide background worker that runs recipes, and the panel that follows a job.

The worker is a single daemon thread reading a queue (two CPU cores gain nothing from two jobs at
once). It never calls ``st.*``: it updates plain ``Job`` records under a lock, and the page polls
them from an ``st.fragment`` that reruns every second. Results go to the results store like any
CLI run, so a job's row survives the browser tab and the server.

A job belongs to the page that started it: its panel is drawn there, and every other page shows a
small indicator with a link back to it in the sidebar. Cancel stops a job at its next check; a
training step stops gracefully, its best weights are evaluated and stored (status "cancelled"); a
second Cancel may stop that last evaluation too.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import streamlit as st

from core.errors import CancelledError, SqueezeLabError
from core.models import LoadedModel
from core.recipe import Recipe, pipeline
from core.store import ResultRow, ResultStore, UnknownResultError, default_results_dir
from ui import generation, results, state
from ui.cache import store_at
from ui.errors import describe, log, shown

ACTIVE = ("queued", "running")
NEUTRAL = {"delta_color": "off", "delta_arrow": "off"}  # st.metric's sub-line for a figure that is not a change
_KEEP_FINISHED = 200  # finished job records kept for reconnecting; results themselves live in the store


@dataclass
class Job:
    """A submitted recipe and how far it got. ``fraction`` is the progress of the current stage."""

    id: str
    recipe: Recipe
    label: str
    results_dir: str
    status: str = "queued"  # queued / running / done / failed / cancelled
    stage: str = ""
    fraction: float = 0.0
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    stage_started: float | None = None
    finished: float | None = None
    result_id: str | None = None  # the store row (also for a failed or cancelled run, once it exists)
    error: str | None = None
    cancel_requested: bool = False
    abort_requested: bool = False  # a second cancel: stop even the evaluation of what a cancelled step kept
    curve: list[dict] = field(default_factory=list)  # training records of a distill step, as they arrive
    page: str = ""  # the file of the page that started the job ("pages/prune.py"); its panel is drawn there
    # work other than one recipe (a sweep, an atlas): task(on_progress, cancel, on_record) -> the id of the row
    # to show, or None when the work keeps no row (its page shows what it made)
    task: Callable[..., str | None] | None = None

    @property
    def elapsed_s(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def stage_eta_s(self) -> float | None:
        """Seconds left in the current stage, from its fraction done and the time it has taken."""
        if self.status != "running" or self.stage_started is None or not 0.02 <= self.fraction < 1:
            return None
        spent = time.time() - self.stage_started
        return spent * (1 - self.fraction) / self.fraction


class _RecordingStore(ResultStore):
    """A ResultStore that remembers the row id a run starts, so a job can name its row even when it fails."""

    def __init__(self, root: str, on_start) -> None:
        super().__init__(root)
        self._on_start = on_start

    def start(self, *args, **kwargs) -> str:
        run_id = super().start(*args, **kwargs)
        self._on_start(run_id)
        return run_id


class Worker:
    """Runs submitted recipes one at a time in a daemon thread."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Job, LoadedModel | None]] = queue.Queue()
        self._jobs: dict[str, Job] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._abort: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._thread = threading.Thread(target=self._loop, name="squeezelab-worker", daemon=True)
        self._thread.start()

    def submit(self, recipe: Recipe, base: LoadedModel | None = None, label: str = "", page: str = "",
               task: Callable[..., str | None] | None = None) -> str:
        """Queue ``recipe``; ``base`` (the cached model of ``recipe.model``) saves loading it again;
        ``page`` is the file of the page that started it (its panel is drawn there).

        ``task`` replaces the run of ``recipe`` by other work (a sweep of it, an atlas of its model):
        ``task(on_progress, cancel, on_record)`` returns the id of the result row the job ends on (or None);
        ``on_record(dict)`` adds to ``curve``."""
        if base is not None and base.source.ref != recipe.model:
            raise ValueError(f"base model {base.source.ref!r} is not the recipe's model {recipe.model!r}")
        job_id = f"{next(self._counter)}-{secrets.token_hex(3)}"
        job = Job(job_id, recipe, label or describe_recipe(recipe), str(default_results_dir()), page=page, task=task)
        with self._lock:
            self._jobs[job_id] = job
            self._cancel[job_id] = threading.Event()
            self._abort[job_id] = threading.Event()
            self._forget_old()
        self._queue.put((job, base))
        return job_id

    def get(self, job_id: str) -> Job | None:
        """A snapshot of the job (safe to read while the worker goes on), or None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            return dataclasses.replace(job, curve=list(job.curve)) if job is not None else None

    def jobs(self) -> list[Job]:
        """Snapshots of every known job, newest first."""
        with self._lock:
            return [dataclasses.replace(job, curve=list(job.curve)) for job in reversed(self._jobs.values())]

    def queued_ahead(self, job_id: str) -> int:
        """How many jobs run before this queued one."""
        with self._lock:
            ahead = itertools.takewhile(lambda j: j.id != job_id, self._jobs.values())
            return sum(1 for j in ahead if j.status in ACTIVE)

    def cancel(self, job_id: str) -> None:
        """Ask a job to stop: a queued one never starts, a running one stops at its next check (a training step
        keeps its best weights, which are then evaluated). Asked again, it stops that evaluation too."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status not in ACTIVE:
                return
            if job.cancel_requested:
                job.abort_requested = True
                self._abort[job_id].set()
            job.cancel_requested = True
            self._cancel[job_id].set()
            if job.status == "queued":
                job.status, job.finished = "cancelled", time.time()

    def wait(self, job_id: str, timeout_s: float) -> Job | None:
        """Block until the job has finished or ``timeout_s`` passed; the job's latest snapshot."""
        deadline = time.monotonic() + timeout_s
        job = self.get(job_id)
        while job is not None and job.status in ACTIVE and time.monotonic() < deadline:
            time.sleep(0.1)
            job = self.get(job_id)
        return job

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.status not in ACTIVE]
        for job_id in finished[: max(0, len(finished) - _KEEP_FINISHED)]:
            del self._jobs[job_id]
            del self._cancel[job_id]
            del self._abort[job_id]

    def _update(self, job: Job, **changes) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(job, name, value)

    def _loop(self) -> None:
        while True:
            job, base = self._queue.get()
            try:
                if self._start(job):
                    self._run(job, base)
            except BaseException as error:  # never let one job kill the thread that runs the next
                log.exception("job %s crashed the worker loop", job.id)
                self._update(job, status="failed", error=describe(error), finished=time.time())
            finally:
                self._queue.task_done()

    def _start(self, job: Job) -> bool:
        """Mark a queued job running; False when it was cancelled while it waited."""
        with self._lock:
            if job.status != "queued":
                return False
            job.status, job.stage, job.started = "running", "start", time.time()
            job.stage_started = job.started
            return True

    def _run(self, job: Job, base: LoadedModel | None) -> None:
        cancel, abort = self._cancel[job.id], self._abort[job.id]

        def on_progress(stage: str, fraction: float) -> None:
            family = stage.split(":")[0]  # "prune (wanda): model.layers.3.mlp" -> one stage per family
            with self._lock:
                if family != job.stage.split(":")[0]:
                    job.stage_started = time.time()
                job.stage, job.fraction = stage, max(0.0, min(1.0, float(fraction)))

        def on_step(record: dict) -> None:
            with self._lock:
                job.curve.append(record)

        try:
            status = "done"
            if job.task is not None:
                result_id = job.task(on_progress, cancel.is_set, on_step)
            else:
                store = _RecordingStore(job.results_dir, lambda run_id: self._update(job, result_id=run_id))
                row = pipeline.run(job.recipe, store, base=base, on_progress=on_progress, cancel=cancel.is_set,
                                   on_step=on_step, abort=abort.is_set)
                result_id = row.id
                # a step that stopped gracefully on a cancel leaves a "cancelled" row with its metrics
                status = "cancelled" if row.status == "cancelled" else "done"
        except CancelledError as error:
            self._update(job, status="cancelled", error=str(error), finished=time.time())
        except SqueezeLabError as error:  # bad input: the message says what to do
            self._update(job, status="failed", error=str(error), finished=time.time())
        except Exception as error:  # a bug or a library failure: the traceback goes to the server log
            log.exception("job %s failed", job.id)
            self._update(job, status="failed", error=describe(error), finished=time.time())
        else:
            self._update(job, status=status, result_id=result_id, stage=status, fraction=1.0, finished=time.time())


def describe_recipe(recipe: Recipe) -> str:
    """A short label such as 'magnitude 50% on sample:teacher' (or 'evaluate sample:teacher')."""
    labels = [getattr(step.parsed, "label", step.kind) for step in recipe.steps]
    described = f"{' + '.join(labels)} on {recipe.model}" if labels else f"evaluate {recipe.model}"
    return described + (f", exported as {recipe.export.get('format', 'hf')}" if recipe.export else "")


@st.cache_resource
def worker() -> Worker:
    """The one worker of this server process, shared by every session."""
    return Worker()


def submit(recipe: Recipe, base: LoadedModel | None = None) -> str:
    """Queue ``recipe`` on the process-wide worker and return the job id; the page shown now owns the job."""
    return worker().submit(recipe, base, page=state.current_page())


# ---- the panel ----------------------------------------------------------------------------------


def job_panel(job_id: str | None = None, extra: Callable[[Job], None] | None = None) -> None:
    """Follow a job (by default the session's current one): live while it runs, then its result.

    The panel is drawn only on the page that started the job; elsewhere the sidebar shows a small
    indicator with a link to it (``job_indicator``). ``extra(job)`` draws more of the job inside the
    panel (e.g. live training curves), every poll."""
    job_id = job_id or state.current_job_id()
    if not job_id:
        return
    job = worker().get(job_id)
    if job is not None and not on_its_page(job):
        return
    if job is not None and job.status in ACTIVE:
        _live_panel(job_id, extra)
    else:
        _render(job_id, job, extra)


def on_its_page(job: Job) -> bool:
    """Whether the page shown now is the one that started ``job`` (a job of no known page is shown anywhere)."""
    return not job.page or job.page == state.current_page()


@st.fragment(run_every=1.0)
def _live_panel(job_id: str, extra: Callable[[Job], None] | None = None) -> None:
    job = worker().get(job_id)
    _render(job_id, job, extra)
    if job is None or job.status not in ACTIVE:
        st.rerun()  # the whole page: stop polling and let it show what the job produced


def _render(job_id: str, job: Job | None, extra: Callable[[Job], None] | None = None) -> None:
    with st.container(border=True):
        if job is None:
            st.info(f"Job {job_id} is not known to this server (it may have restarted, which loses the progress "
                    "of queued and running jobs). Every finished run is on the Trade-offs page.")
            st.button("Dismiss", key=f"dismiss-{job_id}", on_click=state.forget_job)
            return
        st.markdown(f"**Job {job.id}** · {job.label}")
        if job.status == "queued":
            ahead = worker().queued_ahead(job.id)
            st.progress(0.0, text=f"queued ({ahead} job{'s' * (ahead != 1)} ahead)")
        elif job.status == "running":
            _render_running(job)
        else:
            _render_finished(job)
        if extra is not None:
            extra(job)
        if job.status in ACTIVE and not job.cancel_requested:
            st.button("Cancel", key=f"cancel-{job.id}", on_click=worker().cancel, args=(job.id,))
        elif job.status in ACTIVE:
            st.button("Cancel the final evaluation too", key=f"abort-{job.id}", disabled=job.abort_requested,
                      on_click=worker().cancel, args=(job.id,),
                      help="A training step that was cancelled keeps its best weights, which are evaluated and "
                           "stored; this stops that evaluation too (the result then has no metrics).")
        else:
            st.button("Dismiss", key=f"dismiss-{job.id}", on_click=state.forget_job)


def _render_running(job: Job) -> None:
    st.progress(job.fraction, text=job.stage + (f" ({job.fraction:.0%})" if job.fraction > 0 else ""))
    eta = job.stage_eta_s
    parts = [f"running for {job.elapsed_s:.0f} s"]
    if eta is not None:
        parts.append(f"about {eta:.0f} s left in this stage")
    if job.abort_requested:
        parts.append("cancelling, the final evaluation too...")
    elif job.cancel_requested:
        parts.append("cancelling at the next checkpoint (a training step keeps its best weights, evaluated next)...")
    st.caption(" · ".join(parts))


def _render_finished(job: Job) -> None:
    if job.status == "failed":
        row = f" Its result row {job.result_id} is marked failed." if job.result_id else ""
        st.error(f"Failed: {(job.error or 'no message').rstrip('.')}.{row}")
        return
    row = _stored_row(job) if job.result_id else None
    measured = row is not None and row.perplexity is not None
    if job.status == "done":  # a task that keeps no row (an atlas) is shown by its page
        st.success(f"Finished in {job.elapsed_s:.1f} s" + (f" · result {job.result_id}" if job.result_id else ""))
    elif measured:  # a step stopped gracefully on the cancel: what it kept was evaluated and stored
        st.warning(f"Cancelled after {job.elapsed_s:.0f} s: what the run had done was kept, evaluated and stored as "
                   f"result {row.id} (status cancelled).")
    else:
        when = f" after {job.elapsed_s:.0f} s" if job.started else " before it started"
        st.warning(f"Cancelled{when}." + (f" Its result row {job.result_id} is marked cancelled." if row else ""))
    if measured:
        result_metrics(row)
        for note in row.details.get("notes") or []:  # e.g. calibration text from another domain, a cut seqlen
            st.caption(f"Note: {note}")
        result_prompt_box(row, job.results_dir)


def result_prompt_box(row: ResultRow, results_dir: str) -> None:
    """What this result's model writes, and how fast (``ui.generation``), in an expander."""
    with st.expander("Generate with this result"):
        default = "def read_config(path):\n" if row.model.startswith("sample:") else "The capital of France is"
        with shown("Generation"):
            generation.prompt_box(f"result_{row.id}", lambda: generation.result_model(row.id, str(results_dir)),
                                  default, label="Generate")


def _stored_row(job: Job) -> ResultRow | None:
    try:
        return store_at(job.results_dir).get(job.result_id)
    except UnknownResultError:
        st.warning(f"result {job.result_id} is no longer in {job.results_dir} (deleted?)")
        return None


def result_metrics(row: ResultRow) -> None:
    """A result's headline figures with how sure they are: the perplexity's 95% interval, the paired verdict
    against the base model on the same windows (an arrow only for a real difference), the spread of the
    timed runs, and the notes (a rough interval, a busy machine)."""
    details = row.details
    pruned = any(step.get("kind") == "prune" for step in details.get("steps") or [])
    cols = iter(st.columns([3, 2, 2, 2] if pruned else [3, 2, 2]))  # the perplexity carries its ± and a longer delta
    next(cols).metric("Perplexity", results.perplexity_value(row), **results.perplexity_delta(row),
                      help="± half the 95% interval over the evaluation windows; the comparison with the base is "
                           "paired, window by window.")
    # the figures below a neutral headline are neither better nor worse: no arrow, no colour
    next(cols).metric("Top-1 accuracy", _fmt(row.top1_acc, ".1%"),
                      delta=None if row.top1_agreement is None else f"{row.top1_agreement:.1%} agree with base",
                      **NEUTRAL)
    if pruned:  # zeros are what pruning makes; a quantized or distilled model's few zeros say nothing
        sparsity = 1 - row.nonzero_params / row.params if row.params else None
        next(cols).metric("Zeros", _fmt(sparsity, ".1%"), delta=f"{row.nonzero_params or 0:,} non-zero", **NEUTRAL,
                          help="Share of all parameters that are zero; embeddings and lm_head stay dense.")
    next(cols).metric("Size", _fmt(row.size_bytes / 1e6 if row.size_bytes else None, ".2f", " MB"),
                      delta=_fmt(row.bits_per_weight, ".1f", " bits/weight"), **NEUTRAL)
    st.caption(results.interval_caption(row))
    speed = results.speed_caption(row)
    st.caption(f"{details.get('text', '?')}, seqlen {details.get('seqlen', '?')}, {details.get('windows', '?')} windows"
               f" · KL(base‖model) {_fmt(row.kl_to_base, '.4f')} · {row.kernel} on {row.device}"
               + (f" · {speed}" if speed else ""))
    loop = results.loop_caption(row)
    if loop:
        st.caption(loop)
    for note in results.notes(row):
        st.warning(note)


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{format(value, spec)}{suffix}"
