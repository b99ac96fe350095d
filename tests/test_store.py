"""Results store: rows survive crashes, artifacts appear atomically, writers do not lose rows."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.errors import CancelledError, ResultStoreError
from core.store import (
    INTERRUPTED,
    RESULT_FIELDS,
    ResultRow,
    ResultStore,
    UnknownResultError,
    default_results_dir,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = "model: sample:tiny\nsteps:\n  - prune: {method: magnitude, sparsity: 0.5}\n"


def _python(root: Path, code: str) -> list[str]:
    """A command running `code` in a fresh interpreter with `store = ResultStore(root)` made."""
    script = f"from core.store import ResultStore\nstore = ResultStore({str(root)!r})\n{code}"
    return [sys.executable, "-c", script]


def _run_python(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_python(root, code), cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=False)


def test_result_fields_are_the_shared_contract() -> None:
    assert RESULT_FIELDS == (
        "id", "created", "model", "recipe", "perplexity", "base_perplexity", "top1_acc",
        "top1_agreement", "kl_to_base", "params", "nonzero_params", "perplexity_ci_low",
        "perplexity_ci_high", "size_bytes", "bits_per_weight", "prefill_ms", "decode_tok_s", "peak_mem_bytes",
        "kernel", "device", "wall_s", "status",
    )


def test_start_finish_get_list_round_trip(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    run_id = store.start("sample:tiny", RECIPE, device="cpu", details={"seqlen": 128})
    assert store.get(run_id).status == "running"
    assert store.get(run_id).pid == os.getpid()

    row = store.finish(run_id, perplexity=12.5, params=1000, nonzero_params=500,
                       kernel="dense fp32 with zeros", details={"windows": 4})
    assert row.status == "ok" and row.error is None
    assert row.perplexity == 12.5 and row.params == 1000 and row.nonzero_params == 500
    assert row.details == {"seqlen": 128, "windows": 4}  # merged, not replaced
    assert row.recipe == RECIPE and row.device == "cpu"

    again = ResultStore(tmp_path).get(run_id)
    assert again == row
    second = store.start("sample:tiny", RECIPE)
    assert [r.id for r in store.list()] == [second, run_id]  # newest first
    assert [r.id for r in store.list(status="ok")] == [run_id]


def test_row_dict_round_trip_is_json_safe(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    row = store.finish(store.start("m", RECIPE), perplexity=float("inf"), top1_acc=0.25)
    data = json.loads(json.dumps(row.to_dict(), allow_nan=False))
    assert data["perplexity"] is None and data["top1_acc"] == 0.25
    assert ResultRow.from_dict(data).top1_acc == 0.25
    with pytest.raises(ValueError, match="bogus"):
        ResultRow.from_dict({**data, "bogus": 1})


def test_unknown_metric_key_raises_and_leaves_row_running(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    run_id = store.start("m", RECIPE)
    with pytest.raises(ValueError, match="perplexty"):
        store.finish(run_id, perplexty=3.0)
    with pytest.raises(ValueError, match="params"):
        store.finish(run_id, params=2.5)  # a parameter count cannot be fractional
    with pytest.raises(ValueError, match="'ok' or 'cancelled'"):
        store.finish(run_id, status="failed")
    assert store.get(run_id).status == "running"


def test_unknown_id_is_a_key_error_that_names_it(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(KeyError, match="nope"):
        store.get("nope")
    with pytest.raises(UnknownResultError):
        store.finish("nope", perplexity=1.0)


def test_exception_in_run_keeps_a_failed_row(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(RuntimeError), store.run("m", RECIPE) as run_id:
        raise RuntimeError("out of memory")
    row = store.get(run_id)
    assert row.status == "failed"
    assert row.error == "RuntimeError: out of memory"


@pytest.mark.parametrize("exc", [KeyboardInterrupt, CancelledError])
def test_interrupt_in_run_marks_cancelled(tmp_path: Path, exc: type[BaseException]) -> None:
    store = ResultStore(tmp_path)
    with pytest.raises(exc), store.run("m", RECIPE) as run_id:
        raise exc()
    assert store.get(run_id).status == "cancelled"


def test_run_without_finish_fails_and_with_finish_is_ok(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    with store.run("m", RECIPE) as forgot:
        pass
    with store.run("m", RECIPE) as done:
        store.finish(done, perplexity=2.0)
    assert store.get(forgot).status == "failed"
    assert store.get(forgot).error == "finished without a result"
    assert store.get(done).status == "ok"


def test_crashed_process_leaves_a_failed_row_never_a_missing_one(tmp_path: Path) -> None:
    done = _run_python(tmp_path, "print(store.start('m', 'steps: []'), flush=True)\n"
                                    "import os; os._exit(1)")
    assert done.returncode == 1, done.stderr
    run_id = done.stdout.strip()

    rows = ResultStore(tmp_path).list()
    assert [r.id for r in rows] == [run_id]
    assert rows[0].status == "failed"
    assert rows[0].error == INTERRUPTED


def test_row_of_a_live_process_stays_running_until_it_dies(tmp_path: Path) -> None:
    code = "print(store.start('m', 'steps: []'), flush=True)\nimport sys; sys.stdin.read()"
    child = subprocess.Popen(_python(tmp_path, code), cwd=REPO, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        run_id = child.stdout.readline().strip()
        assert ResultStore(tmp_path).get(run_id).status == "running"
    finally:
        child.kill()
        child.wait(timeout=30)
    assert ResultStore(tmp_path).get(run_id).error == INTERRUPTED


def test_row_with_our_pid_but_not_ours_is_reaped(tmp_path: Path) -> None:
    # What a restarted container sees: a row left by an earlier process that had the same pid.
    store = ResultStore(tmp_path)
    mine = store.start("m", RECIPE)
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("INSERT INTO results (id, created, model, recipe, status, pid) "
                     "VALUES ('old', '2000-01-01T00:00:00+00:00', 'm', '', 'running', ?)",
                     (os.getpid(),))
    conn.close()
    assert ResultStore(tmp_path).get("old").status == "failed"
    assert store.get(mine).status == "running"  # a live run of this process is left alone


def test_write_artifact_moves_the_folder_into_place(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    run_id = store.start("m", RECIPE)
    final = store.artifact_dir(run_id)
    with store.write_artifact(run_id) as tmp:
        (tmp / "model.txt").write_text("first")
        assert not final.exists()  # nothing under the final name until the block succeeds
    with store.write_artifact(run_id) as tmp:
        (tmp / "model.txt").write_text("second")
        assert (final / "model.txt").read_text() == "first"  # the old one stays until then
    assert (final / "model.txt").read_text() == "second"  # replaced, not merged or kept
    assert store.get(run_id).artifact_path == str(final)
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [run_id]


def test_write_artifact_failure_leaves_nothing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    run_id = store.start("m", RECIPE)
    with pytest.raises(OSError, match="disk full"), store.write_artifact(run_id) as tmp:
        (tmp / "half.bin").write_bytes(b"\0" * 10)
        raise OSError("disk full")
    assert list((tmp_path / "artifacts").iterdir()) == []
    assert store.get(run_id).artifact_path is None


def test_startup_removes_leftovers_of_crashed_writers(tmp_path: Path) -> None:
    done = _run_python(tmp_path, "rid = store.start('m', 'steps: []')\n"
                                    "cm = store.write_artifact(rid); tmp = cm.__enter__()\n"
                                    "(tmp / 'x').write_text('x'); import os; os._exit(1)")
    assert done.returncode == 1, done.stderr
    assert len(list((tmp_path / "artifacts").glob(".tmp-*"))) == 1
    ResultStore(tmp_path)
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_delete_removes_row_and_artifact(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    run_id = store.start("m", RECIPE)
    with store.write_artifact(run_id) as tmp:
        (tmp / "x").write_text("x")
    store.delete(run_id)
    assert store.list() == []
    assert not store.artifact_dir(run_id).exists()


def test_csv_header_is_exactly_the_result_fields(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.finish(store.start("m", RECIPE, details={"secret": 1}), perplexity=3.5)
    buffer = io.StringIO()
    text = store.to_csv(buffer)
    assert text.splitlines()[0].split(",") == list(RESULT_FIELDS)
    assert buffer.getvalue() == text
    assert "secret" not in text  # details are not part of the CSV
    frame = store.to_dataframe()
    assert list(frame.columns) == [*RESULT_FIELDS, "error"]
    assert frame.loc[0, "perplexity"] == 3.5 and frame.loc[0, "recipe"] == RECIPE


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    shared = ResultStore(tmp_path)

    def write(store: ResultStore) -> list[str]:
        ids = [store.start("m", RECIPE) for _ in range(20)]
        for i, run_id in enumerate(ids):
            store.finish(run_id, params=i)
        return ids

    # one writer shares the store object, the other has its own: both must be safe
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(write, store) for store in (shared, ResultStore(tmp_path))]
        ids = [run_id for f in futures for run_id in f.result()]  # re-raises a thread's error
    rows = shared.list(status="ok")
    assert len(rows) == 40 and sorted(r.id for r in rows) == sorted(ids)
    assert len(set(ids)) == 40


def test_newer_schema_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    ResultStore(tmp_path)
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(Exception, match="upgrade SqueezeLab"):
        ResultStore(tmp_path)


def test_results_dir_comes_from_the_environment(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUEEZELAB_RESULTS_DIR", str(tmp_path / "elsewhere"))
    assert default_results_dir() == tmp_path / "elsewhere"
    store = ResultStore()
    assert (tmp_path / "elsewhere" / "results.db").exists() and store.root == tmp_path / "elsewhere"
    monkeypatch.delenv("SQUEEZELAB_RESULTS_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_results_dir() == tmp_path / ".squeezelab" / "results"


def test_startup_restores_an_artifact_a_crash_left_aside(tmp_path: Path) -> None:
    # A crash between "move the old artifact aside" and "move the new one in" leaves `.old-*`.
    artifacts = tmp_path / "artifacts"
    aside = artifacts / ".old-20240101-000000-abcdef-999999999-00ff00ff"
    aside.mkdir(parents=True)
    (aside / "x").write_text("kept")
    (aside / ".squeezelab-scratch").write_text(aside.name)  # the store marks what it moves aside
    ResultStore(tmp_path)
    assert (artifacts / "20240101-000000-abcdef" / "x").read_text() == "kept"
    assert [p.name for p in artifacts.iterdir()] == ["20240101-000000-abcdef"]
    assert not (artifacts / "20240101-000000-abcdef" / ".squeezelab-scratch").exists()


def test_startup_touches_nothing_it_cannot_prove_it_made(tmp_path: Path) -> None:
    """Entries under artifacts/ that look like scratch but lack the exact name, the marker or a dead owner stay."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(parents=True)
    decoys = {
        ".tmp-notes": "a user's folder",
        ".old-settings": "a user's folder named like a leftover",
        ".tmp-20240101-000000-abcdef-999999999-00ff00ff": "the exact name but no marker",
        ".old-20240101-000000-abcdef-999999999-aabbccdd": "the exact name, a marker that names another folder",
    }
    for name, text in decoys.items():
        (artifacts / name).mkdir()
        (artifacts / name / "kept.txt").write_text(text)
    (artifacts / ".old-20240101-000000-abcdef-999999999-aabbccdd" / ".squeezelab-scratch").write_text(".tmp-other")
    (artifacts / ".tmp-file-999999999-00ff00ff").write_text("a file, not a folder")
    (artifacts / ".tmp-link-999999999-00ff00ff").symlink_to(artifacts / ".tmp-notes")
    ResultStore(tmp_path)
    for name, text in decoys.items():
        assert (artifacts / name / "kept.txt").read_text() == text
    assert (artifacts / ".tmp-file-999999999-00ff00ff").read_text() == "a file, not a folder"
    assert (artifacts / ".tmp-link-999999999-00ff00ff").is_symlink()


def test_a_version_1_database_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    """Results written before the interval and sweep columns existed stay readable, with those fields empty."""
    import sqlite3

    old = ("id", "created", "model", "recipe", "perplexity", "status", "error", "details", "pid", "artifact_path")
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute(f"CREATE TABLE results ({', '.join(old)}, PRIMARY KEY (id))")
        conn.execute("INSERT INTO results (id, created, model, recipe, perplexity, status, details) "
                     "VALUES ('r1', '2026-01-01T00:00:00', 'm', 'model: m', 3.5, 'ok', '{}')")
        conn.execute("PRAGMA user_version = 1")
    row = ResultStore(tmp_path).get("r1")
    assert row.perplexity == 3.5 and row.perplexity_ci_low is None and row.sweep is None


# ---- read-only stores and broken folders or databases ----------------------------------------------


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root with its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_read_only_store_of_a_missing_folder_creates_nothing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "absent", read_only=True)
    assert store.list() == [] and store.to_csv().splitlines() == [",".join(RESULT_FIELDS)]
    with pytest.raises(UnknownResultError):
        store.get("20240101-000000-abcdef")
    assert not (tmp_path / "absent").exists()


def test_a_read_only_store_reads_rows_and_writes_nothing(tmp_path: Path) -> None:
    writer = ResultStore(tmp_path)
    run_id = writer.finish(writer.start("m", RECIPE), perplexity=4.0).id
    before = _files(tmp_path)
    reader = ResultStore(tmp_path, read_only=True)
    assert [r.id for r in reader.list()] == [run_id] and reader.get(run_id).perplexity == 4.0
    assert reader.list(status="ok")[0].id == run_id and reader.list(status="failed") == []
    for write in (lambda: reader.start("m", RECIPE), lambda: reader.delete(run_id),
                  lambda: reader.reap_interrupted()):
        with pytest.raises(RuntimeError, match="read-only"):
            write()
    with pytest.raises(RuntimeError, match="read-only"), reader.write_artifact(run_id):
        pass
    assert _files(tmp_path) == before  # no -wal / -shm, no schema change, nothing touched


def test_a_read_only_store_sees_rows_a_live_writer_holds_in_its_wal(tmp_path: Path) -> None:
    writer = ResultStore(tmp_path)
    holder = sqlite3.connect(tmp_path / "results.db")  # a second process's open connection keeps the WAL
    try:
        holder.execute("SELECT count(*) FROM results").fetchone()
        run_id = writer.start("m", RECIPE)
        assert (tmp_path / "results.db-wal").exists()
        assert [r.id for r in ResultStore(tmp_path, read_only=True).list()] == [run_id]
    finally:
        holder.close()


def test_a_read_only_store_shows_an_orphan_as_failed_without_changing_it(tmp_path: Path) -> None:
    from core.store_claims import release

    writer = ResultStore(tmp_path)
    run_id = writer.start("m", RECIPE)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.execute("UPDATE results SET pid = ? WHERE id = ?", (int(dead), run_id))
    conn.close()
    release(run_id)  # as if another process had started it and died
    seen = ResultStore(tmp_path, read_only=True).get(run_id)
    assert seen.status == "failed" and seen.error == INTERRUPTED
    with sqlite3.connect(tmp_path / "results.db") as conn:
        assert conn.execute("SELECT status FROM results WHERE id = ?", (run_id,)).fetchone() == ("running",)
    conn.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_a_damaged_database_is_refused_and_left_as_it_was(tmp_path: Path, read_only: bool) -> None:
    writer = ResultStore(tmp_path)
    writer.finish(writer.start("m", RECIPE * 400), perplexity=1.0)  # a few pages
    db = tmp_path / "results.db"
    db.write_bytes(db.read_bytes()[:5000])
    before = _files(tmp_path)
    with pytest.raises(ResultStoreError) as info:
        ResultStore(tmp_path, read_only=read_only).list()
    assert str(db) in str(info.value) and "Move it aside" in str(info.value)
    assert _files(tmp_path) == before


@pytest.mark.parametrize("read_only", [False, True])
def test_a_file_where_the_results_folder_belongs_is_refused(tmp_path: Path, read_only: bool) -> None:
    (tmp_path / "results").write_text("notes")
    with pytest.raises(ResultStoreError, match="is a file, not a folder"):
        ResultStore(tmp_path / "results", read_only=read_only)
    assert (tmp_path / "results").read_text() == "notes"


def test_a_results_folder_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(ResultStoreError, match="cannot create the results folder"):
        ResultStore(tmp_path / "blocker" / "results")


def test_an_empty_database_file_reads_as_no_results(tmp_path: Path) -> None:
    (tmp_path / "results.db").write_bytes(b"")
    assert ResultStore(tmp_path, read_only=True).list() == []
    store = ResultStore(tmp_path)  # and a writer starts a database in it
    assert store.get(store.start("m", RECIPE)).status == "running"


def test_a_full_disk_is_reported_and_records_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path)
    connect = ResultStore._connect

    def no_room(self: ResultStore) -> sqlite3.Connection:  # SQLite's own SQLITE_FULL: no page may be added
        conn = connect(self)
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")
        return conn

    monkeypatch.setattr(ResultStore, "_connect", no_room)
    with pytest.raises(ResultStoreError, match="is full"):
        store.start("m", RECIPE * 400)
    monkeypatch.undo()
    assert store.list() == []


def test_a_run_whose_row_cannot_be_finished_raises_the_store_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path)
    monkeypatch.setattr(ResultStore, "fail", lambda *args, **kwargs: (_ for _ in ()).throw(
        ResultStoreError("disk full")))
    with pytest.raises(ValueError, match="the run's own error"), store.run("m", RECIPE):
        raise ValueError("the run's own error")  # the original error wins over the store's
