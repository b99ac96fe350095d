"""Export and the user's files: nothing that SqueezeLab did not make is removed or replaced, ever.

The clean-up of killed exports removes only marked scratch folders of dead processes; targets (folder, zip)
are refused when they exist, are links, or sit below a file; a full disk leaves nothing behind; and
``squeezelab.json`` records where the artifact lives and how big it really is.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from core.cli import main
from core.export import files
from core.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
QUICK = "model: sample:teacher\nevaluation: {max_windows: 2, seqlen: 64, latency: false}\n"
# Installed as sitecustomize in a child process: the export pauses once its weights are in the scratch folder.
PAUSE_AT_RELOAD = '''
import os, time
from pathlib import Path
import core.export.check as check

def paused(*args, **kwargs):
    Path(os.environ["EXPORT_PAUSED_FLAG"]).touch()
    time.sleep(600)

check.reload_artifact = paused
'''


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(QUICK)
    return path


@pytest.fixture
def live_pid():
    """The pid of a process that is alive while the test runs (and is not this one)."""
    child = subprocess.Popen(["sleep", "600"])
    yield child.pid
    child.kill()
    child.wait()


def export_args(recipe: Path, out: Path, results: Path, *extra: str, fmt: str = "hf") -> list[str]:
    return ["export", str(recipe), "--format", fmt, "--out", str(out), "--check-windows", "1",
            "--results-dir", str(results), *extra]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def scratch_folder(parent: Path, name: str, pid: int, token: str = "0123456789abcdef", role: str = "write",
                   marker: dict | None = None) -> Path:
    """A folder named like SqueezeLab's scratch, with the marker SqueezeLab writes (or ``marker`` instead)."""
    folder = parent / f".{name}.export-{role}-{pid}-{token}"
    folder.mkdir()
    record = {"made_by": "squeezelab export", "role": role, "pid": pid, "token": token, "target": name}
    (folder / files.MARKER).write_text(json.dumps(record if marker is None else marker))
    return folder


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder`` (links not followed): its bytes, its link target, or that it is a folder."""
    seen: dict[str, object] = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            key = str(path.relative_to(folder))
            seen[key] = ("link", os.readlink(path)) if path.is_symlink() else ("dir",) if path.is_dir() \
                else ("file", path.read_bytes())
    return seen


def decoys(parent: Path, elsewhere: Path, live_pid: int) -> None:
    """Hidden entries that look like scratch but are not SqueezeLab's to remove (plus a user's file)."""
    dead = dead_pid()
    (parent / "mine.txt").write_text("the user's notes")
    (parent / ".settings.export-backup").write_text("the user's settings")
    (parent / ".x.export-1234-abc").write_text("not ours either")
    unmarked = parent / f".model.export-write-{dead}-fedcba9876543210"  # our pattern exactly, but no marker
    unmarked.mkdir()
    (unmarked / "data.bin").write_bytes(b"\x00\x01")
    scratch_folder(parent, "notes", dead, marker={"role": "write", "pid": dead, "token": "ffffffffffffffff",
                                                  "target": "notes"})  # a marker that disagrees with the name
    scratch_folder(parent, "live", live_pid)  # marked, but its process is alive
    elsewhere.mkdir()
    linked = scratch_folder(elsewhere, "link", dead)  # a valid scratch folder, reached only through a link
    (linked / "precious.txt").write_text("do not follow links")
    os.symlink(linked, parent / linked.name)
    (parent / f".file.export-zip-{dead}-0123456789abcdef").write_text("a file, not a folder")


def test_the_cleanup_removes_only_marked_scratch_of_dead_processes(tmp_path: Path, live_pid: int) -> None:
    parent, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    parent.mkdir()
    decoys(parent, elsewhere, live_pid)
    before, outside = snapshot(parent), snapshot(elsewhere)
    dead = dead_pid()
    abandoned = scratch_folder(parent, "model", dead)
    (abandoned / "model").mkdir()
    (abandoned / "model" / "model.safetensors").write_bytes(b"half written")
    previous = scratch_folder(parent, "older", dead, role="old")  # killed while replacing `older`
    (previous / files.PREVIOUS).mkdir()
    (previous / files.PREVIOUS / "squeezelab.json").write_text("{}")
    assert files.remove_abandoned(parent) == 2
    assert (parent / "older" / "squeezelab.json").read_text() == "{}"  # put back, not deleted
    after = snapshot(parent)
    assert {k: v for k, v in after.items() if not k.startswith("older")} == before
    assert snapshot(elsewhere) == outside


def test_kill_9_mid_export_touches_nothing_of_the_users_and_the_next_export_cleans_up(
        tmp_path: Path, recipe: Path, live_pid: int) -> None:
    parent = tmp_path / "out"
    parent.mkdir()
    decoys(parent, tmp_path / "elsewhere", live_pid)
    before = snapshot(parent)
    hooks, flag = tmp_path / "hooks", tmp_path / "paused"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PAUSE_AT_RELOAD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hooks), str(ROOT)]), "EXPORT_PAUSED_FLAG": str(flag),
           "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "core.cli", *export_args(recipe, parent / "model", tmp_path / "results", "--zip")]
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # a busy machine: starting python and torch can take a while
        while not flag.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists(), f"the export never reached the reload (exit {child.poll()}): {child.stderr.read()}"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    left = sorted(set(snapshot(parent)) - set(before))
    assert left and all(name.startswith(f".model.export-write-{child.pid}-") for name in left), left
    assert not (parent / "model").exists() and not (parent / "model.zip").exists()
    assert main(export_args(recipe, parent / "model", tmp_path / "results", "--zip")) == 0
    after = snapshot(parent)
    assert {k: v for k, v in after.items() if not k.startswith("model")} == before  # the killed scratch is gone
    assert (parent / "model" / "squeezelab.json").is_file() and files.written_zip(parent / "model.zip")


def test_a_full_disk_while_writing_the_weights_leaves_no_folder_and_no_zip(tmp_path: Path, recipe: Path,
                                                                            monkeypatch, capsys) -> None:
    import safetensors.torch

    def full(_tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 1000)  # a partial file, as a disk filling up leaves one
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    parent = tmp_path / "exports"
    code = main(export_args(recipe, parent / "deep" / "model", tmp_path / "results", "--zip"))
    assert code == 2
    assert "is full" in capsys.readouterr().err
    assert not parent.exists()  # not even the folders made for it
    assert [row.status for row in ResultStore(tmp_path / "results").list()] == ["failed"]


def test_an_existing_zip_is_refused_and_replaced_only_when_squeezelab_wrote_it(tmp_path: Path, recipe: Path,
                                                                               capsys) -> None:
    out, results = tmp_path / "model", tmp_path / "results"
    user_zip = out.with_name("model.zip")
    user_zip.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip of the user's
    original = user_zip.read_bytes()
    assert main(export_args(recipe, out, results, "--zip")) == 2
    assert "model.zip already exists; choose another path or set overwrite: true" in capsys.readouterr().err
    assert main(export_args(recipe, out, results, "--zip", "--overwrite")) == 2
    assert "is not a zip SqueezeLab wrote (it holds no model/squeezelab.json)" in capsys.readouterr().err
    assert user_zip.read_bytes() == original and not out.exists()
    assert ResultStore(results).list() == []  # refused before the run started
    user_zip.unlink()
    assert main(export_args(recipe, out, results, "--zip")) == 0
    first = zipfile.ZipFile(user_zip).namelist()
    assert main(export_args(recipe, out, results, "--zip", "--overwrite", fmt="gguf")) == 0
    second = zipfile.ZipFile(user_zip).namelist()
    assert "model/model.safetensors" in first and any(name.endswith(".gguf") for name in second)
    assert list(out.glob("*.gguf")) and not (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch left


def test_a_link_or_a_file_in_the_way_is_never_replaced(tmp_path: Path, recipe: Path, capsys) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "squeezelab.json").write_text("{}")  # looks like an export: still not replaced through a link
    link = tmp_path / "model"
    os.symlink(elsewhere, link)
    assert main(export_args(recipe, link, tmp_path / "results", "--overwrite")) == 2
    err = capsys.readouterr().err
    assert "is a symbolic link (to" in err and "never replaces a link" in err
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "nowhere", dangling)
    assert main(export_args(recipe, dangling, tmp_path / "results")) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and dangling.is_symlink() and snapshot(elsewhere) == {"squeezelab.json": ("file", b"{}")}


def test_the_record_says_the_final_path_and_the_real_size(tmp_path: Path, recipe: Path, capsys) -> None:
    out = tmp_path / "model"
    assert main([*export_args(recipe, out, tmp_path / "results", "--zip"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    record = json.loads((out / "squeezelab.json").read_text())["export"]
    assert record["path"] == str(out) and record["zip_path"] == str(out) + ".zip"
    assert record["size_bytes"] == files.folder_bytes(out) == row["size_bytes"] > 0
    stored = tmp_path / "stored.yaml"
    stored.write_text(QUICK + "export: {format: hf}\n")
    assert main(["run", str(stored), "--json", "--results-dir", str(tmp_path / "results")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    final = Path(row["details"]["export"]["path"])
    record = json.loads((final / "squeezelab.json").read_text())["export"]
    assert record["path"] == str(final) and final.parent == ResultStore(tmp_path / "results").artifact_dir(row["id"])
    assert record["size_bytes"] == files.folder_bytes(final) == row["size_bytes"]


def test_checking_a_target_creates_nothing(tmp_path: Path) -> None:
    files.check_target(tmp_path / "a" / "b" / "model", zip=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "squeezelab.json").write_text("{}")
    files.check_target(tmp_path / "model", overwrite=True)  # an earlier export may be replaced
    with pytest.raises(files.ExportError, match="already exists"):
        files.check_target(tmp_path / "model")
