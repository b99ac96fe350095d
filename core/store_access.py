"""How the results store meets the disk: its folder, strictly read-only reads of its database, and what a broken
folder or database means to the user.

A read-only reader writes nothing at all: no folder, no schema, no migration, no reaping, and no SQLite side
files. SQLite's ``mode=ro`` still creates ``-wal`` / ``-shm`` files beside a WAL database; they matter only while
a writer has its WAL open, and then they exist already. Without a WAL the database is opened ``immutable``,
which creates nothing. A damaged database is reported with its path and never changed: SqueezeLab neither
deletes nor rewrites it, and a writer checks it read-only before opening it for writing.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.errors import ResultStoreError

# SQLite's primary result codes (``sqlite_errorcode & 0xff``) that mean the folder, the file or the disk.
_PERM, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 8, 10, 11, 13, 14, 26
ELSEWHERE = "or point --results-dir (SQUEEZELAB_RESULTS_DIR) at another folder"


def damaged(db_path: Path, detail: object) -> ResultStoreError:
    """The refusal of a damaged database: what is wrong, that it was left as it is, and the way out."""
    return ResultStoreError(
        f"the results database {db_path} is damaged or is not a SQLite database ({detail}); SqueezeLab has not "
        f"changed it. Move it aside (mv {db_path} {db_path}.broken) and SqueezeLab starts a new one, {ELSEWHERE}")


def store_error(exc: sqlite3.Error, db_path: Path) -> ResultStoreError | None:
    """The ResultStoreError an SQLite error stands for, or None when it is not about the folder, file or disk."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (_CORRUPT, _NOTADB):
        return damaged(db_path, exc)
    if code == _FULL:
        return ResultStoreError(f"the disk holding {db_path} is full ({exc}); nothing was recorded. Free some space, "
                                f"{ELSEWHERE}")
    if code == _IOERR:
        return ResultStoreError(f"cannot read or write {db_path} ({exc}): the disk may be full or failing. Free some "
                                f"space or check the disk, {ELSEWHERE}")
    if code in (_PERM, _READONLY, _CANTOPEN):
        return ResultStoreError(f"cannot open {db_path} ({exc}); check that {db_path.parent} is a folder you may "
                                f"write to, {ELSEWHERE}")
    return None


@contextlib.contextmanager
def translated(db_path: Path) -> Iterator[None]:
    """Raise SQLite's errors about the folder, file or disk as ResultStoreError; others (a clash of ids) pass."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        error = store_error(exc, db_path)
        if error is None:
            raise
        raise error from exc


def check_paths(root: Path, artifacts: Path, db_path: Path) -> None:
    """Refuse a file where the store expects a folder, or a folder where it expects its database."""
    for folder in (root, artifacts):
        if folder.exists() and not folder.is_dir():
            raise ResultStoreError(f"the results folder {folder} is a file, not a folder; move the file aside "
                                   f"{ELSEWHERE}")
    if db_path.exists() and not db_path.is_file():
        raise ResultStoreError(f"{db_path} is a folder, not the results database; move it aside {ELSEWHERE}")


def make_folders(root: Path, artifacts: Path, db_path: Path) -> None:
    """Create the store's folders, or say why they cannot be (a file in the way, no permission, no space)."""
    check_paths(root, artifacts, db_path)
    try:
        artifacts.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultStoreError(f"cannot create the results folder {artifacts} ({exc.strerror or exc}); check the "
                               f"path and its permissions, {ELSEWHERE}") from exc


def _connect_read_only(db_path: Path) -> sqlite3.Connection:
    wal = db_path.with_name(db_path.name + "-wal")
    mode = "mode=ro" if wal.exists() else "immutable=1"  # immutable creates no side files (see the module doc)
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?{mode}", uri=True, timeout=30, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def read_only_rows(db_path: Path, sql: str, args: tuple[Any, ...], newest_schema: int) -> list[sqlite3.Row]:
    """The rows of ``sql`` on the ``results`` table, read without writing anything; [] when there is no table."""

    def select(conn: sqlite3.Connection) -> list[sqlite3.Row]:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > newest_schema:
            raise ResultStoreError(f"{db_path} has schema version {version}, newer than this SqueezeLab reads "
                                   f"({newest_schema}); upgrade SqueezeLab {ELSEWHERE}")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'results'").fetchone() is None:
            return []  # a database created but never written: no results yet
        return conn.execute(sql, args).fetchall()

    return _read(db_path, select)


def check_intact(db_path: Path) -> None:
    """Refuse, before it is opened for writing, a database that is damaged: a write could rewrite it."""
    if not db_path.is_file() or db_path.stat().st_size == 0:
        return  # nothing yet: SQLite starts a new database there
    problems = _read(db_path, lambda conn: conn.execute("PRAGMA quick_check").fetchall())
    first = problems[0][0] if problems else "ok"
    if first != "ok":
        raise damaged(db_path, first)


def _read(db_path: Path, query: Callable[[sqlite3.Connection], list[sqlite3.Row]]) -> list[sqlite3.Row]:
    """``query`` on a read-only connection, tried twice: an immutable read can meet a writer's checkpoint halfway
    and see a page as damaged; damage that is real is there the second time too."""
    if not db_path.exists():
        return []
    for attempt in (1, 2):
        try:
            with contextlib.closing(_connect_read_only(db_path)) as conn:
                return query(conn)
        except sqlite3.DatabaseError as exc:
            error = store_error(exc, db_path)
            if error is None:
                raise
            if attempt == 2 or getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (_CORRUPT, _NOTADB):
                raise error from exc
    raise AssertionError("unreachable: the second attempt returns or raises")
