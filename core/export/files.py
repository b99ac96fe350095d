"""The files of an export: the targets checked before work, marked scratch folders beside them, an all-or-nothing
move into place, a zip written from disk, and the clean-up of what a killed export left behind.

Nothing of the user's is touched. Every scratch entry SqueezeLab creates is a *folder* named
``.<target>.export-<role>-<pid>-<token>`` (role ``write``: the artifact being written and checked; ``zip``: the
zip being written; ``old``: an earlier export being replaced) that holds a marker file, ``.squeezelab-export``,
repeating the role, pid and token. A later export removes an entry only when all of it holds: the name parses
exactly to that pattern, it is a real folder (not a file, not a symbolic link), its marker is a regular file
that agrees with the name, and the pid is a number whose process is gone. Anything else is left alone.

Targets: an existing folder or zip is refused without ``overwrite``; with it, a folder is replaced only when it
is empty or an earlier export (it holds ``squeezelab.json``), and a zip only when SqueezeLab wrote it (it holds
``<name>/squeezelab.json``). A symbolic link is never replaced, nor a path below a file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import stat
import threading
import zipfile
from pathlib import Path

from core.errors import ExportError

SCRATCH_TAG = ".export-"
MARKER = ".squeezelab-export"
RECORD = "squeezelab.json"  # every export holds it (core.export.card): how an earlier export is recognised
ROLES = ("write", "zip", "old")
PREVIOUS = "previous"  # inside an ``old`` scratch folder: the replaced folder; ``previous.zip``: the replaced zip
_SCRATCH_NAME = re.compile(r"^\.(?P<name>.+)\.export-(?P<role>write|zip|old)-(?P<pid>[0-9]{1,10})-"
                           r"(?P<token>[0-9a-f]{16})$")
_TEXT_SUFFIXES = (".json", ".md", ".txt", ".jinja")
_MARKER_MAX_BYTES = 4096

# The scratch folders this process is writing: an entry carrying our own pid that is not listed here was left by
# an earlier process that had the same pid (containers reuse small pids), so it is abandoned.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


# ---- the targets, checked before any work (no side effects) ----


def zip_target(target: Path) -> Path:
    """``<target>.zip``, beside the folder."""
    return target.with_name(target.name + ".zip")


def check_target(path: Path, overwrite: bool = False, zip: bool = False) -> None:
    """Refuse, before any work, a target (and with ``zip`` its ``.zip``) that cannot be written or replaced.

    Creates nothing: missing parent folders are made when the export starts writing.
    """
    path = Path(path).expanduser()
    check_parent(path)
    check_replaceable(path, overwrite, "folder")
    if zip:
        check_replaceable(zip_target(path), overwrite, "zip")


def existing_ancestor(path: Path) -> Path:
    """The nearest folder above ``path`` that exists (``path.parent`` when it does)."""
    parent = Path(os.path.abspath(path)).parent
    while not os.path.lexists(parent):
        parent = parent.parent
    return parent


def check_parent(path: Path) -> None:
    """Refuse a target below a file, or whose nearest existing folder cannot be written."""
    ancestor = existing_ancestor(path)
    if not ancestor.is_dir():
        raise ExportError(f"cannot create the folder {path.parent}: {ancestor} is a file, not a folder; "
                          "choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write to {ancestor} (permission denied); choose a path you can write to")


def check_replaceable(path: Path, overwrite: bool, kind: str) -> None:
    """Refuse an existing ``path`` unless ``overwrite`` and SqueezeLab may replace it (see the module docstring)."""
    if os.path.islink(path):
        raise ExportError(f"{path} is a symbolic link (to {os.readlink(path)}); an export never replaces a link, "
                          "because writing through it would replace what it points to and replacing it would "
                          "break it. Export to the real path or choose another one")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise ExportError(f"{path} already exists; choose another path or set overwrite: true (--overwrite)")
    reason = _not_ours(path, kind)
    if reason:
        raise ExportError(f"{path} {reason}; --overwrite replaces only an earlier SqueezeLab export, so nothing "
                          "was changed. Move it away or choose another path")


def _not_ours(path: Path, kind: str) -> str | None:
    """Why an existing ``path`` is not SqueezeLab's to replace, or None."""
    if kind == "zip":
        if not path.is_file():
            return "exists and is not a file"
        return None if written_zip(path) else f"is not a zip SqueezeLab wrote (it holds no {path.stem}/{RECORD})"
    if not path.is_dir():
        return "exists and is not a folder"
    entries = [entry.name for entry in os.scandir(path)]
    if entries and RECORD not in entries:
        return f"holds files SqueezeLab did not write (e.g. {sorted(entries)[0]}) and no {RECORD}"
    return None


def written_zip(path: Path) -> bool:
    """Whether ``path`` is a zip SqueezeLab wrote: it holds ``<name>/squeezelab.json`` (``name.zip``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return f"{path.stem}/{RECORD}" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def check_free_space(path: Path, needed: int) -> None:
    """Refuse an export that would not fit on the disk holding ``path``."""
    free = shutil.disk_usage(existing_ancestor(Path(path).expanduser())).free
    if needed > free:
        raise ExportError(f"the disk holding {Path(path).parent} has {free / 1e6:,.0f} MB free but this export needs "
                          f"about {needed / 1e6:,.0f} MB; free some space or choose another path")


def make_parents(path: Path) -> list[Path]:
    """Create the missing folders above ``path``; returns them, deepest first, so a failure can remove them."""
    missing = []
    parent = Path(os.path.abspath(path)).parent
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove folders ``make_parents`` created, deepest first, where they are still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


# ---- scratch folders: made, marked, released ----


def make_scratch(target: Path, role: str) -> Path:
    """A new, marked scratch folder beside ``target`` for ``role`` (write | zip | old); never an existing entry."""
    token = secrets.token_hex(8)
    path = target.parent / f".{target.name}{SCRATCH_TAG}{role}-{os.getpid()}-{token}"
    with _ACTIVE_LOCK:
        _ACTIVE.add(path.name)
    try:
        path.mkdir()
        record = {"made_by": "squeezelab export", "role": role, "pid": os.getpid(), "token": token,
                  "target": target.name}
        (path / MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")
    except BaseException:
        release_scratch(path)
        raise
    return path


def release_scratch(path: Path) -> None:
    """Delete a scratch folder this process made (whatever is left in it) and forget it."""
    shutil.rmtree(path, ignore_errors=True)
    with _ACTIVE_LOCK:
        _ACTIVE.discard(path.name)


def remove_abandoned(folder: Path) -> int:
    """Remove the scratch folders that killed exports left in ``folder``; returns how many.

    Only folders SqueezeLab can prove it made (see the module docstring) and whose process is gone; an
    ``old`` one whose target is missing (killed while replacing it) is put back in place instead of deleted.
    """
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in os.scandir(folder):
        match = _abandoned_scratch(entry)
        if match is None:
            continue
        path = Path(entry.path)
        if match["role"] == "old":
            _restore_previous(path, folder / match["name"])
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed


def _abandoned_scratch(entry: os.DirEntry) -> re.Match | None:
    """The parsed name of a scratch folder that SqueezeLab made and whose process is gone, else None."""
    match = _SCRATCH_NAME.match(entry.name)
    if match is None or not entry.is_dir(follow_symlinks=False):
        return None
    if _marker(Path(entry.path)) != (match["role"], int(match["pid"]), match["token"], match["name"]):
        return None
    with _ACTIVE_LOCK:
        if entry.name in _ACTIVE:
            return None
    pid = int(match["pid"])
    return match if pid == os.getpid() or not _process_alive(pid) else None


def _marker(folder: Path) -> tuple | None:
    """(role, pid, token, target name) from a scratch folder's marker; None unless it is a small regular file."""
    path = folder / MARKER
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MARKER_MAX_BYTES:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
        return record["role"], int(record["pid"]), str(record["token"]), str(record["target"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _restore_previous(scratch: Path, target: Path) -> None:
    """Put an earlier export back where it was, if an export was killed after moving it aside."""
    for kept, place in ((scratch / PREVIOUS, target), (scratch / f"{PREVIOUS}.zip", zip_target(target))):
        if os.path.lexists(kept) and not os.path.lexists(place):
            os.replace(kept, place)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists; True whenever that cannot be proved otherwise."""
    if os.name == "nt" or pid <= 0:  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)  # signal 0 only checks that the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


# ---- moving into place: all or nothing ----


def move_into_place(content: Path, target: Path, zip_file: Path | None, overwrite: bool) -> None:
    """Rename ``content`` to ``target`` (and ``zip_file`` to ``<target>.zip``), all or nothing.

    The targets are checked again first (something may have appeared while exporting). With ``overwrite`` an
    earlier export is moved into a marked ``old`` scratch folder, and deleted only once everything is in place;
    on failure what was placed is removed and the earlier export put back.
    """
    moves = [(content, target)] + ([(zip_file, zip_target(target))] if zip_file is not None else [])
    for source, place in moves:
        _check_still_free(place, overwrite, "zip" if source is zip_file else "folder")
    previous = [place for _, place in moves if os.path.lexists(place)]
    old = make_scratch(target, "old") if previous else None
    aside, placed = [], []
    try:
        for place in previous:
            kept = old / (f"{PREVIOUS}.zip" if place != target else PREVIOUS)
            os.replace(place, kept)
            aside.append((kept, place))
        for source, place in moves:
            os.replace(source, place)
            placed.append(place)
    except BaseException:
        _undo(placed, aside, old)
        raise
    if old is not None:
        release_scratch(old)


def _check_still_free(place: Path, overwrite: bool, kind: str) -> None:
    try:
        check_replaceable(place, overwrite, kind)
    except ExportError as exc:
        raise ExportError(f"while exporting: {exc}") from exc


def _undo(placed: list[Path], aside: list[tuple[Path, Path]], old: Path | None) -> None:
    """Remove what was placed and put back what was moved aside; the ``old`` folder goes once it is empty."""
    for place in placed:
        shutil.rmtree(place, ignore_errors=True) if place.is_dir() else place.unlink(missing_ok=True)
    restored = True
    for kept, place in aside:
        try:
            os.replace(kept, place)
        except OSError:
            restored = False  # the marked folder keeps it: the next export puts it back
    if old is not None and restored:
        release_scratch(old)
    elif old is not None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(old.name)


# ---- errors, sizes, zips ----


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
