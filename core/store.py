"""Results history: one SQLite row per run plus one artifact folder per result.

The database lives at `<root>/results.db` (WAL mode, so the app, a background worker and a CLI
process can write at once) and artifacts at `<root>/artifacts/<id>/`. A row is committed as
"running" before any work starts, so a crash can leave a row that says "running" but never a
missing one; `reap_interrupted()` turns such orphans into failed rows that say what happened.
`ResultStore(root, read_only=True)` only reads: it creates no folder, schema or file, migrates and
reaps nothing, and shows an orphaned "running" row as failed without changing it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from core.checks import check_keys
from core.errors import CancelledError, ResultStoreError, SqueezeLabError
from core.store_access import check_intact, check_paths, make_folders, read_only_rows, translated
from core.store_claims import abandoned, claim, mark, own_scratch, release, scratch_name, unmark

RESULT_FIELDS: tuple[str, ...] = (
    "id", "created", "model", "recipe", "perplexity", "base_perplexity", "top1_acc",
    "top1_agreement", "kl_to_base", "params", "nonzero_params", "perplexity_ci_low", "perplexity_ci_high",
    "size_bytes", "bits_per_weight", "prefill_ms", "decode_tok_s", "peak_mem_bytes", "kernel", "device", "wall_s",
    "status",
)
# sweep: the name of the sweep a trial belongs to; sweep_params: its parameters (JSON, dotted recipe paths)
EXTRA_FIELDS: tuple[str, ...] = ("error", "details", "pid", "artifact_path", "sweep", "sweep_params")
STATUSES: tuple[str, ...] = ("running", "ok", "failed", "cancelled")
INTERRUPTED = "interrupted: the process that ran it stopped before it finished"
SCHEMA_VERSION = 2  # 2: perplexity_ci_low / perplexity_ci_high, sweep / sweep_params

_FLOATS = ("perplexity", "base_perplexity", "top1_acc", "top1_agreement", "kl_to_base", "perplexity_ci_low",
           "perplexity_ci_high", "bits_per_weight", "prefill_ms", "decode_tok_s", "wall_s")
_INTS = ("params", "nonzero_params", "size_bytes", "peak_mem_bytes", "pid")
# What `finish(**metrics)` may set; id, created, model, recipe and pid belong to `start`.
METRIC_FIELDS: tuple[str, ...] = (*_FLOATS, "params", "nonzero_params", "size_bytes",
                                  "peak_mem_bytes", "kernel", "device")

class UnknownResultError(SqueezeLabError, KeyError):
    """No row has the given id."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0])


@dataclass
class ResultRow:
    """One run: what was asked (model, recipe), what was measured, and how it ended."""

    id: str
    created: str  # ISO-8601 UTC with microseconds: sorts in time order as text
    model: str
    recipe: str  # YAML text of the recipe that produced this row
    perplexity: float | None = None
    base_perplexity: float | None = None
    top1_acc: float | None = None
    top1_agreement: float | None = None
    kl_to_base: float | None = None
    params: int | None = None
    nonzero_params: int | None = None
    perplexity_ci_low: float | None = None  # 95% interval of the perplexity, from the per-window losses
    perplexity_ci_high: float | None = None
    size_bytes: int | None = None  # bytes of the artifact on disk, not of tensors in memory
    bits_per_weight: float | None = None
    prefill_ms: float | None = None
    decode_tok_s: float | None = None
    peak_mem_bytes: int | None = None
    kernel: str | None = None  # what actually ran, e.g. "int8 dynamic (fbgemm)"
    device: str | None = None
    wall_s: float | None = None
    status: str = "running"  # one of STATUSES
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # seqlen, windows, dtype, threads, ...
    pid: int | None = None  # the process that started the run
    artifact_path: str | None = None
    sweep: str | None = None  # the sweep this run is a trial of (None: a run of its own)
    sweep_params: str | None = None  # JSON of the trial's parameters, e.g. {"steps.0.quantize.bits": 4}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; NaN/inf become None because strict JSON has no such numbers."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in _FLOATS:
            if out[name] is not None and not math.isfinite(out[name]):
                out[name] = None
        out["details"] = json.loads(_dump_details(self.details))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Inverse of `to_dict`; `details` may be a dict or its JSON text."""
        check_keys(data, RESULT_FIELDS + EXTRA_FIELDS, "result field")
        details = data.get("details") or {}
        details = json.loads(details) if isinstance(details, str) else dict(details)
        return cls(**{**data, "details": details})


def default_results_dir() -> Path:
    """`$SQUEEZELAB_RESULTS_DIR` when set, else `~/.squeezelab/results`."""
    env = os.environ.get("SQUEEZELAB_RESULTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".squeezelab" / "results"


class ResultStore:
    """Results history under `root` (default `default_results_dir()`). Safe to use from several
    threads and processes at once: every call opens its own short connection. `read_only=True`
    (history, the app's listings) writes nothing at all; a missing folder then reads as empty."""

    def __init__(self, root: Path | str | None = None, read_only: bool = False) -> None:
        self.root = Path(root).expanduser() if root is not None else default_results_dir()
        self.artifacts = self.root / "artifacts"
        self.db_path = self.root / "results.db"
        self.read_only = read_only
        if read_only:
            check_paths(self.root, self.artifacts, self.db_path)
            return
        check_intact(self.db_path)  # a damaged database is reported as it is, never written into
        make_folders(self.root, self.artifacts, self.db_path)
        with translated(self.db_path):
            self._create_schema()
        self._clean_scratch_folders()
        self.reap_interrupted()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: `_write` issues BEGIN IMMEDIATE itself, so a read-then-write
        # transaction waits for the write lock up front instead of failing as "locked" midway.
        conn = sqlite3.connect(self.db_path, timeout=30, check_same_thread=False,
                               isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA synchronous=NORMAL")  # per connection; safe with WAL
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if self.read_only:
            raise RuntimeError(f"the store at {self.root} was opened read-only; open ResultStore(root) to write")
        with translated(self.db_path), contextlib.closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            with conn:  # commit on success, roll back on exception
                yield conn

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """The rows of a SELECT on `results`; a read-only store reads without writing anything."""
        if self.read_only:
            return read_only_rows(self.db_path, sql, args, SCHEMA_VERSION)
        with translated(self.db_path), contextlib.closing(self._connect()) as conn:
            return conn.execute(sql, args).fetchall()

    def _as_seen(self, row: ResultRow) -> ResultRow:
        """A read-only store shows an orphaned "running" row as the failed row the next writer will make it."""
        if self.read_only and row.status == "running" and abandoned(row.id, row.pid):
            return replace(row, status="failed", error=INTERRUPTED)
        return row

    def _create_schema(self) -> None:
        types = {**dict.fromkeys(_FLOATS, "REAL"), **dict.fromkeys(_INTS, "INTEGER")}
        cols = ", ".join(f"{n} {types.get(n, 'TEXT')}" for n in RESULT_FIELDS + EXTRA_FIELDS)
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SqueezeLabError(
                    f"{self.db_path} has schema version {version}, newer than this SqueezeLab "
                    f"reads ({SCHEMA_VERSION}); upgrade SqueezeLab or point "
                    "SQUEEZELAB_RESULTS_DIR at another folder.")
            conn.execute(f"CREATE TABLE IF NOT EXISTS results ({cols}, PRIMARY KEY (id))")
            present = {r["name"] for r in conn.execute("PRAGMA table_info(results)")}
            for name in RESULT_FIELDS + EXTRA_FIELDS:  # an older schema gains the new columns, empty
                if name not in present:
                    conn.execute(f"ALTER TABLE results ADD COLUMN {name} {types.get(name, 'TEXT')}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def start(self, model: str, recipe: str, device: str | None = None, details: dict[str, Any] | None = None,
              sweep: str | None = None, sweep_params: str | None = None) -> str:
        """Commit a "running" row for a run about to begin and return its id (tagged when a sweep's trial)."""
        for _ in range(5):  # the random suffix makes a clash within one second very unlikely
            now = datetime.now(UTC)
            run_id = f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            claim(run_id)  # before the insert, so no reaper ever sees it unclaimed
            try:
                with self._write() as conn:
                    conn.execute(
                        "INSERT INTO results (id, created, model, recipe, device, status,"
                        " details, pid, sweep, sweep_params) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                        (run_id, now.isoformat(timespec="microseconds"), model, recipe, device,
                         _dump_details(details or {}), os.getpid(), sweep, sweep_params))
                return run_id
            except BaseException as e:
                release(run_id)
                if not isinstance(e, sqlite3.IntegrityError):
                    raise
        raise RuntimeError("Could not find a free result id after 5 tries")

    def finish(self, run_id: str, **metrics: Any) -> ResultRow:
        """Record measured metrics and mark the run "ok" (or `status="cancelled"`).

        Keys are METRIC_FIELDS, `status` and `details` (merged into the details from `start`).
        """
        status = metrics.pop("status", "ok")
        if status not in ("ok", "cancelled"):
            raise ValueError(f"finish() takes status 'ok' or 'cancelled', not {status!r}; "
                             "use fail() for a failed run")
        extra = metrics.pop("details", None) or {}
        check_keys(metrics, METRIC_FIELDS, "metric", "finish()")
        values = {k: _coerce(k, v) for k, v in metrics.items()}
        with self._write() as conn:
            details = {**self._get(conn, run_id).details, **extra}
            sets = "".join(f", {k} = ?" for k in values)
            conn.execute(f"UPDATE results SET status = ?, error = NULL, details = ?{sets} "
                         "WHERE id = ?", (status, _dump_details(details), *values.values(), run_id))
            row = self._get(conn, run_id)
        release(run_id)
        return row

    def fail(self, run_id: str, error: str, status: str = "failed") -> None:
        """Mark a run failed (or cancelled) with a message a user can read."""
        if status not in ("failed", "cancelled"):
            raise ValueError(f"fail() takes status 'failed' or 'cancelled', not {status!r}")
        with self._write() as conn:
            self._get(conn, run_id)  # a clear error for an unknown id
            conn.execute("UPDATE results SET status = ?, error = ? WHERE id = ?",
                         (status, error, run_id))
        release(run_id)

    def _get(self, conn: sqlite3.Connection, run_id: str) -> ResultRow:
        found = conn.execute("SELECT * FROM results WHERE id = ?", (run_id,)).fetchone()
        if found is None:
            raise UnknownResultError(f"No result with id {run_id!r} in {self.db_path}; "
                                     "list() shows the ids that exist.")
        return ResultRow.from_dict(dict(found))

    def get(self, run_id: str) -> ResultRow:
        """The row with this id; UnknownResultError (a KeyError) if there is none."""
        found = self._rows("SELECT * FROM results WHERE id = ?", (run_id,))
        if not found:
            raise UnknownResultError(f"No result with id {run_id!r} in {self.db_path}; "
                                     "list() shows the ids that exist.")
        return self._as_seen(ResultRow.from_dict(dict(found[0])))

    def list(self, status: str | None = None) -> list[ResultRow]:
        """All rows, newest first; only those with `status` when given."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"Unknown status {status!r}; choose one of {', '.join(STATUSES)}")
        rows = [self._as_seen(ResultRow.from_dict(dict(r)))
                for r in self._rows("SELECT * FROM results ORDER BY created DESC, id DESC")]
        return [row for row in rows if status is None or row.status == status]

    def sweep_rows(self, sweep: str | None = None) -> list[ResultRow]:
        """The rows of the sweep named ``sweep`` (of every sweep when None), oldest first."""
        return [row for row in reversed(self.list()) if row.sweep is not None and sweep in (None, row.sweep)]

    def delete(self, run_id: str) -> None:
        """Remove a row and its artifact folder."""
        with self._write() as conn:
            self._get(conn, run_id)
            conn.execute("DELETE FROM results WHERE id = ?", (run_id,))
        shutil.rmtree(self.artifact_dir(run_id), ignore_errors=True)

    def reap_interrupted(self) -> int:
        """Mark "running" rows whose process is gone as failed; return how many."""
        with self._write() as conn:
            running = conn.execute("SELECT id, pid FROM results WHERE status = 'running'")
            dead = [r["id"] for r in running.fetchall() if abandoned(r["id"], r["pid"])]
            conn.executemany("UPDATE results SET status = 'failed', error = ? WHERE id = ?",
                             [(INTERRUPTED, run_id) for run_id in dead])
        return len(dead)

    @contextlib.contextmanager
    def run(self, model: str, recipe: str, device: str | None = None, details: dict[str, Any] | None = None,
            sweep: str | None = None, sweep_params: str | None = None) -> Iterator[str]:
        """Start a row and yield its id; the row never stays "running" after the block."""
        run_id = self.start(model, recipe, device, details, sweep, sweep_params)
        try:
            yield run_id
        except BaseException as e:
            cancelled = isinstance(e, (KeyboardInterrupt, CancelledError))
            try:
                self.fail(run_id, f"{type(e).__name__}: {e}",
                          "cancelled" if cancelled else "failed")
            except (sqlite3.Error, KeyError, ResultStoreError):
                # the original error matters more; the next reap marks the row interrupted
                release(run_id)
            raise
        if self.get(run_id).status == "running":
            self.fail(run_id, "finished without a result")

    def artifact_dir(self, run_id: str) -> Path:
        """Where the artifact of `run_id` lives once written (it may not exist)."""
        return self.artifacts / run_id

    @contextlib.contextmanager
    def write_artifact(self, run_id: str) -> Iterator[Path]:
        """Yield an empty temporary folder; when the block succeeds it atomically becomes
        `artifact_dir(run_id)` (replacing an older one); when it fails nothing is left."""
        if self.read_only:
            raise RuntimeError(f"the store at {self.root} was opened read-only; open ResultStore(root) to write")
        self.get(run_id)
        tmp = self.artifacts / scratch_name(".tmp-", run_id)
        try:
            tmp.mkdir()
            mark(tmp)
            yield tmp
            unmark(tmp)  # it becomes the artifact: the marker stays behind only on a crash
            self._move_into_place(tmp, self.artifact_dir(run_id))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            release(tmp.name)
        with self._write() as conn:
            conn.execute("UPDATE results SET artifact_path = ? WHERE id = ?",
                         (str(self.artifact_dir(run_id)), run_id))

    def _move_into_place(self, tmp: Path, final: Path) -> None:
        # A folder cannot be renamed over a non-empty one: move the old one aside, rename the new
        # one in, then delete the old. A crash in between leaves `.old-*`, restored at startup.
        old = self.artifacts / scratch_name(".old-", final.name)
        try:
            had_old = final.exists()
            if had_old:
                os.replace(final, old)
                mark(old)
            try:
                os.replace(tmp, final)
            except OSError:
                if had_old:
                    unmark(old)
                    os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        finally:
            release(old.name)

    def _clean_scratch_folders(self) -> None:
        """Delete scratch folders of crashed writers; restore an artifact a crash left aside.

        Only provably SqueezeLab's own entries (``store_claims.own_scratch``: exact name, real folder, marker)
        whose writer is gone are touched; anything else under ``artifacts/`` is left as it is.
        """
        for path in [*self.artifacts.glob(".tmp-*"), *self.artifacts.glob(".old-*")]:
            owned = own_scratch(path)
            if owned is None or not abandoned(path.name, owned[2]):
                continue
            kind, name, _pid = owned
            final = self.artifacts / name
            if kind == "old" and not final.exists() and final.parent == self.artifacts:
                unmark(path)
                os.replace(path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)

    def to_dataframe(self) -> pd.DataFrame:
        """All rows, newest first, with columns RESULT_FIELDS + error."""
        columns = [*RESULT_FIELDS, "error"]
        return pd.DataFrame([{c: getattr(r, c) for c in columns} for r in self.list()],
                            columns=columns)

    def to_csv(self, path_or_buffer: str | Path | TextIO | None = None) -> str:
        """CSV text with exactly RESULT_FIELDS as header, also written to a path/buffer if given."""
        text = self.to_dataframe()[list(RESULT_FIELDS)].to_csv(index=False)
        if isinstance(path_or_buffer, (str, Path)):
            Path(path_or_buffer).write_text(text, encoding="utf-8")
        elif path_or_buffer is not None:
            path_or_buffer.write(text)
        return text


def _dump_details(details: dict[str, Any]) -> str:
    # numpy/torch scalars have .item(); anything else unknown (Path, dtype) is kept as text
    return json.dumps(details, default=lambda v: v.item() if hasattr(v, "item") else str(v))


def _coerce(name: str, value: Any) -> Any:
    """Convert a metric to its column's type (numpy/torch scalars included) or say why not."""
    kind, convert = (("number", float) if name in _FLOATS else
                     ("whole number", int) if name in _INTS else ("text", str))
    try:  # int(2.5) would silently truncate, hence the round-trip check
        out = None if value is None else convert(value)
        if kind == "whole number" and out is not None and out != value:
            raise ValueError(value)
        return out
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not a {kind}; pass a {kind} or None") from None
