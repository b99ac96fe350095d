"""The files of an export: the target checked before work, a hidden scratch folder beside it, an atomic
rename into place, a zip written from disk, and the clean-up of what a killed export left behind.

Scratch names are ``.<target>.export-<pid>-<random>`` (and ``.<target>.zip.export-...``): hidden, and
carrying the writer's pid, so a later export removes them once that process is gone.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import zipfile
from pathlib import Path

from core.errors import ExportError

SCRATCH_TAG = ".export-"
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja")


def check_target(path: Path, overwrite: bool = False) -> None:
    """Refuse, before any work, a target that exists (unless ``overwrite``) or a parent that cannot be written."""
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists; choose another path or set overwrite: true (--overwrite)")
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path} exists and is not a folder; choose another path")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the folder {parent}: {exc.strerror or exc}; "
                          "choose a path you can write to") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to {parent} (permission denied); choose a path you can write to")


def check_free_space(path: Path, needed: int) -> None:
    """Refuse an export that would not fit on the disk holding ``path``."""
    free = shutil.disk_usage(Path(path).expanduser().parent).free
    if needed > free:
        raise ExportError(f"the disk holding {Path(path).parent} has {free / 1e6:,.0f} MB free but this export needs "
                          f"about {needed / 1e6:,.0f} MB; free some space or choose another path")


def remove_abandoned(folder: Path) -> int:
    """Delete scratch folders and partial zips that killed exports left in ``folder``; returns how many."""
    removed = 0
    for path in Path(folder).glob(f".*{SCRATCH_TAG}*"):
        pid = path.name.rsplit(SCRATCH_TAG, 1)[1].split("-")[0]
        if pid.isdigit() and _process_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def scratch_path(target: Path, suffix: str = "") -> Path:
    return target.parent / f".{target.name}{suffix}{SCRATCH_TAG}{os.getpid()}-{secrets.token_hex(4)}"


def move_into_place(scratch: Path, target: Path, overwrite: bool) -> None:
    """Rename ``scratch`` to ``target``; an existing target (``overwrite``) is swapped out and deleted."""
    if not target.exists():
        os.replace(scratch, target)
        return
    if not overwrite:
        raise ExportError(f"{target} appeared while exporting; nothing was overwritten")
    old = scratch_path(target, ".old")
    os.replace(target, old)
    try:
        os.replace(scratch, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def os_error(exc: OSError, target: Path, needed: int) -> ExportError:
    if exc.errno == errno.ENOSPC:
        return ExportError(f"the disk holding {target.parent} is full (this export needs about {needed / 1e6:,.0f} MB);"
                           " nothing was left behind. Free some space or choose another path")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"cannot write to {target.parent}: {exc.strerror}; nothing was left behind. "
                           "Choose a path you can write to")
    return ExportError(f"writing {target} failed: {exc}; nothing was left behind")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def zip_folder(folder: Path, zip_path: Path, root: str) -> int:
    """Zip ``folder`` as ``root/...`` into ``zip_path`` from disk, file by file; returns the zip's bytes.

    Weights are stored (they barely deflate, and stored entries can be streamed back as they are);
    JSON and text are deflated.
    """
    with zipfile.ZipFile(zip_path, "w", allowZip64=True) as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            kind = zipfile.ZIP_DEFLATED if file.suffix in _TEXT_SUFFIXES else zipfile.ZIP_STORED
            archive.write(file, f"{root}/{file.relative_to(folder).as_posix()}", compress_type=kind)
    return zip_path.stat().st_size
