"""Which process owns a "running" row or a scratch folder of the results store, and whether it is still alive.

A row or a scratch folder records the pid of the process that made it. Another process takes it for abandoned
once that pid no longer exists; this process takes it for abandoned unless it claimed the name itself
(containers reuse the same small pids, so "our pid" alone proves nothing).
"""

from __future__ import annotations

import os
import re
import secrets
import threading
from pathlib import Path

# Process-wide by nature: the run ids and scratch folders this process is working on, whichever
# ResultStore instance made them. A Streamlit rerun builds a new store while a worker thread still
# runs; without this set the new store would take the live run for an interrupted one.
_CLAIMED: set[str] = set()
_CLAIMED_LOCK = threading.Lock()
# A scratch folder of the store: ".tmp-<run id>-<pid>-<8 hex>" (being written) or ".old-<artifact>-<pid>-<8 hex>"
# (an artifact moved aside while its replacement moves in). Only a real folder with exactly such a name AND the
# marker file below, whose content repeats the name, is ever taken for SqueezeLab's own.
SCRATCH = re.compile(r"^\.(tmp|old)-(.+)-(\d+)-([0-9a-f]{8})$")
MARKER = ".squeezelab-scratch"


def claim(name: str) -> str:
    """Mark ``name`` (a run id or a scratch folder) as this process's own until ``release``; return it."""
    with _CLAIMED_LOCK:
        _CLAIMED.add(name)
    return name


def release(name: str) -> None:
    """Give up the claim on ``name``."""
    with _CLAIMED_LOCK:
        _CLAIMED.discard(name)


def scratch_name(prefix: str, run_id: str) -> str:
    """A claimed scratch folder name, ``<prefix><id>-<pid>-<random>``: the pid tells other processes whether the
    writer is alive."""
    return claim(f"{prefix}{run_id}-{os.getpid()}-{secrets.token_hex(4)}")


def abandoned(name: str, pid: int | None) -> bool:
    """Whether the owner of a row or scratch folder is gone: its process no longer exists, or it
    has our pid but nobody in this process claimed it (containers reuse the same small pids)."""
    with _CLAIMED_LOCK:
        if name in _CLAIMED:
            return False
    if pid is None or pid == os.getpid():
        return True
    if os.name == "nt":  # there os.kill(pid, 0) would terminate the process: assume alive
        return False
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists but belongs to another user
        return False
    return False


def mark(folder: Path) -> None:
    """Write the marker that proves ``folder`` is a scratch folder this store made."""
    (folder / MARKER).write_text(folder.name, encoding="utf-8")


def unmark(folder: Path) -> None:
    """Remove the marker (before a scratch folder becomes an artifact)."""
    (folder / MARKER).unlink(missing_ok=True)


def own_scratch(path: Path) -> tuple[str, str, int] | None:
    """(kind "tmp" or "old", the run id or artifact name, pid) when ``path`` is provably a scratch folder of
    the store - the exact name, a real folder (not a link) and its marker - else None: never touch it."""
    match = SCRATCH.match(path.name)
    if match is None or path.is_symlink() or not path.is_dir():
        return None
    marker = path / MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 256:
            return None
        if marker.read_text(encoding="utf-8") != path.name:
            return None
    except (OSError, UnicodeDecodeError):
        return None
    return match[1], match[2], int(match[3])
