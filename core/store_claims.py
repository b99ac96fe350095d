"""Which process owns a "running" row or a scratch folder of the results store, and whether it is still alive.

A row or a scratch folder records the pid of the process that made it. Another process takes it for abandoned
once that pid no longer exists; this process takes it for abandoned unless it claimed the name itself
(containers reuse the same small pids, so "our pid" alone proves nothing).
"""

from __future__ import annotations

import os
import secrets
import threading

# Process-wide by nature: the run ids and scratch folders this process is working on, whichever
# ResultStore instance made them. A Streamlit rerun builds a new store while a worker thread still
# runs; without this set the new store would take the live run for an interrupted one.
_CLAIMED: set[str] = set()
_CLAIMED_LOCK = threading.Lock()


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
