"""Bad input, class by class: every one ends in exit code 2 and a sentence naming the file or value, never a
traceback, and nothing of the user's is written or changed.

The damaged files are made here, from the bundled sample teacher and small hand-written files: cut short,
headers overwritten, random bytes, Latin-1, UTF-16, empty, a folder where a file belongs and a file where a
folder belongs. The commands run in-process through ``core.cli.main`` (fast); a few run as real subprocesses
to prove the exit code and the absence of a traceback end to end.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from core.cli import EXIT_BAD_INPUT
from core.errors import TextSourceError
from core.models.source import SAMPLES_DIR
from core.store import ResultStore
from tests.helpers import cli_exit as call

REPO_ROOT = Path(__file__).resolve().parent.parent
TEACHER = SAMPLES_DIR / "teacher"
FAST = ["--seqlen", "16", "--max-windows", "2", "--no-latency"]
TEXT = "def value(self):\n    return self.items[key]\n" * 200  # a few KB of good UTF-8 text


def noise(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass
class World:
    """The folders one case works in: its results store, and a place for the files it damages."""

    tmp: Path
    results: Path

    def file(self, name: str, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path

    def teacher(self, damage: Callable[[Path], object] | None = None) -> Path:
        """A copy of the sample teacher's folder, damaged by ``damage(folder)``."""
        folder = self.tmp / "teacher"
        shutil.copytree(TEACHER, folder)
        if damage is not None:
            damage(folder)
        return folder

    def gguf(self) -> Path:
        """A small, well-formed GGUF file (two float tensors), to be damaged."""
        import gguf
        import numpy as np

        path = self.tmp / "model.gguf"
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_block_count(1)
        writer.add_tensor("token_embd.weight", np.ones((64, 32), dtype=np.float32))
        writer.add_tensor("output.weight", np.ones((64, 32), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    def store_with_a_row(self) -> Path:
        store = ResultStore(self.results)
        store.finish(store.start("sample:teacher", "model: sample:teacher\n"), perplexity=3.0,
                     details={"padding": "x" * 20_000})  # a few pages, so that cutting it short loses some
        return self.results / "results.db"


@dataclass
class Case:
    argv: list[str]
    needles: tuple[str, ...]
    started: bool = False  # the run had begun (the model was loading): one failed row is its record
    out: Path | None = None  # an export folder that must not appear
    store_intact: bool = False  # the store itself is the bad input: its database must be left byte-identical


# ---- damage done to a model folder --------------------------------------------------------------


def rewrite(name: str, content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(content)


def cut(name: str, keep: float) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * keep)])

    return damage


def edit_config(**changes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key)
            else:
                config[key] = value
        (folder / "config.json").write_text(json.dumps(config))

    return damage


def dir_instead(name: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return damage


def overwrite_header(name: str, size: int) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[:size] = b"\xff" * size
        (folder / name).write_bytes(bytes(data))

    return damage


def other_models_weights(folder: Path) -> None:
    shutil.copy(SAMPLES_DIR / "student" / "model.safetensors", folder / "model.safetensors")


def missing_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


def index_naming_missing_shard(folder: Path) -> None:
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


MODEL_DAMAGE: dict[str, tuple[Callable[[Path], object], str, bool]] = {
    # name: (damage, a word the message must hold, whether the run had started when it was found: a damaged
    # file is found by the checks before any row; only tensors that disagree with the config need the load)
    "config-not-json": (rewrite("config.json", b'{"model_type": "llama",'), "config.json", False),
    "config-empty": (rewrite("config.json", b""), "config.json is empty", False),
    "config-binary": (rewrite("config.json", noise(300)), "config.json", False),
    "config-a-list": (rewrite("config.json", b"[1, 2]"), "JSON object", False),
    "config-wrong-type": (edit_config(hidden_size="wide"), "hidden_size", False),
    "config-no-model-type": (edit_config(model_type=None), "model_type", False),
    "config-more-layers-than-weights": (edit_config(num_hidden_layers=9), "lack", True),
    "config-is-a-folder": (dir_instead("config.json"), "config.json", False),
    "weights-truncated": (cut("model.safetensors", 0.5), "model.safetensors", False),
    "weights-random": (rewrite("model.safetensors", noise(5000)), "model.safetensors", False),
    "weights-empty": (rewrite("model.safetensors", b""), "model.safetensors is empty", False),
    "weights-header-overwritten": (overwrite_header("model.safetensors", 8), "model.safetensors", False),
    "weights-a-folder": (dir_instead("model.safetensors"), "model.safetensors", False),
    "weights-of-another-model": (other_models_weights, "disagree", True),
    "weights-index-names-missing-shard": (index_naming_missing_shard, "model-00002-of-00002", False),
    "tokenizer-garbled": (rewrite("tokenizer.json", noise(400)), "tokenizer.json", False),
    "tokenizer-truncated": (cut("tokenizer.json", 0.5), "tokenizer.json", False),
    "tokenizer-not-a-tokenizer": (rewrite("tokenizer.json", b'{"version": "1.0"}'), "tokenizer.json", False),
    "tokenizer-missing": (missing_tokenizer, "tokenizer", False),
    "tokenizer-config-not-json": (rewrite("tokenizer_config.json", b"{garbled"), "tokenizer_config.json", False),
    "generation-config-latin1": (rewrite("generation_config.json", '{"x": "é"}'.encode("latin-1")),
                                 "generation_config.json", False),
}


def model_case(name: str, command: str = "eval") -> Callable[[World], Case]:
    damage, needle, started = MODEL_DAMAGE[name]

    def build(world: World) -> Case:
        folder = str(world.teacher(damage))
        if command == "distill-teacher":
            return Case(["distill", "--teacher", folder, "--steps", "1", *FAST], (needle,), started)
        if command == "export":
            out = world.tmp / "exported"
            return Case(["export", folder, "--format", "hf", "--out", str(out)], (needle,), started, out=out)
        extra = ["--sparsity", "0.5"] if command == "prune" else []
        return Case([command, "--model", folder, *extra, *FAST], (needle,), started)

    return build


def gguf_case(damage: str) -> Callable[[World], Case]:
    def build(world: World) -> Case:
        path = world.gguf()
        data = path.read_bytes()
        content = {"random": noise(4096), "empty": b"", "truncated": data[: len(data) // 2],
                   "header-only": data[:12]}[damage]
        path.write_bytes(content)
        needle = "empty" if damage == "empty" else "model.gguf"
        return Case(["eval", "--model", str(path), *FAST], (needle,))

    return build


def gguf_folder(world: World) -> Case:
    (world.tmp / "model.gguf").mkdir()
    return Case(["eval", "--model", str(world.tmp / "model.gguf"), *FAST], ("model.gguf",))


def folder_without_config(world: World) -> Case:
    folder = world.teacher(lambda f: (f / "config.json").unlink())
    return Case(["eval", "--model", str(folder), *FAST], ("no config.json",))


# ---- text sources -------------------------------------------------------------------------------


def parquet(world: World, name: str, frame: pd.DataFrame) -> Path:
    path = world.tmp / name
    frame.to_parquet(path)
    return path


TEXT_FILES: dict[str, Callable[[World], tuple[Path, str]]] = {
    "txt-binary": lambda w: (w.file("eval.txt", noise(3000)), "binary data"),
    "txt-latin1": lambda w: (w.file("eval.txt", ("café " + TEXT).encode("latin-1")), "iconv -f latin1"),
    "txt-utf16-bom": lambda w: (w.file("eval.txt", TEXT.encode("utf-16")), "UTF-16"),
    "txt-utf16-no-bom": lambda w: (w.file("eval.txt", TEXT.encode("utf-16-le")), "UTF-16LE"),
    "txt-utf32-bom": lambda w: (w.file("eval.txt", TEXT.encode("utf-32")), "UTF-32"),
    "txt-empty": lambda w: (w.file("eval.txt", b""), "empty"),
    "txt-whitespace": lambda w: (w.file("eval.txt", b" \n\t\n" * 50), "whitespace"),
    "txt-control-characters": lambda w: (w.file("eval.txt", bytes(range(1, 9)) * 300 + TEXT[:200].encode()),
                                         "control characters"),
    "txt-a-folder": lambda w: ((w.tmp / "eval.txt").mkdir() or w.tmp / "eval.txt", "folder"),
    "raw-latin1": lambda w: (w.file("wiki.raw", ("naïve " + TEXT).encode("latin-1")), "line 1"),
    "tokens-binary": lambda w: (w.file("wiki.tokens", noise(3000, seed=1)), "wiki.tokens"),
    "jsonl-bad-line": lambda w: (w.file("rows.jsonl", b'{"text": "a"}\n{"text": \n'), "line 2"),
    "jsonl-text-not-a-string": lambda w: (w.file("rows.jsonl", b'{"text": "a"}\n{"text": 5}\n'), "must be a string"),
    "jsonl-no-text-field": lambda w: (w.file("rows.jsonl", b'{"body": "a"}\n'), "'text' field"),
    "jsonl-latin1": lambda w: (w.file("rows.jsonl", '{"text": "café"}\n'.encode("latin-1")), "not UTF-8"),
    "parquet-no-text-column": lambda w: (parquet(w, "rows.parquet", pd.DataFrame({"body": ["a"]})), "no column 'text'"),
    "parquet-random-bytes": lambda w: (w.file("rows.parquet", noise(2000)), "not a readable Parquet file"),
    "parquet-truncated": lambda w: (w.file("rows.parquet", parquet(w, "full.parquet", pd.DataFrame(
        {"text": [TEXT] * 3})).read_bytes()[:300]), "rows.parquet"),
    "parquet-numbers": lambda w: (parquet(w, "rows.parquet", pd.DataFrame({"text": [1, 2, 3]})), "not text"),
    "parquet-no-rows": lambda w: (parquet(w, "rows.parquet", pd.DataFrame({"text": pd.Series([], dtype=str)})),
                                  "holds no text"),
    "unknown-suffix": lambda w: (w.file("rows.csv", b"text\nhello\n"), ".txt"),
}


def text_case(name: str, option: str = "--text", command: str = "eval") -> Callable[[World], Case]:
    def build(world: World) -> Case:
        path, needle = TEXT_FILES[name](world)
        extra = {"prune": ["--method", "wanda", "--sparsity", "0.5"], "quantize": ["--method", "gptq"],
                 "distill": ["--steps", "1"]}.get(command, [])
        return Case([command, *extra, option, str(path), *FAST], (needle,))

    return build


# ---- recipe files -------------------------------------------------------------------------------

RECIPES: dict[str, tuple[str, bytes, str]] = {
    "recipe-empty": ("r.yaml", b"", "is empty"),
    "recipe-binary": ("r.yaml", noise(600), "binary data"),
    "recipe-latin1": ("r.yaml", "model: sample:teacher  # café\n".encode("latin-1"), "iconv -f latin1"),
    "recipe-utf16": ("r.yaml", "model: sample:teacher\n".encode("utf-16"), "UTF-16"),
    "recipe-a-list": ("r.yaml", b"- model: sample:teacher\n", "mapping"),
    "recipe-a-string": ("r.yaml", b"just words\n", "mapping"),
    "recipe-yaml-syntax": ("r.yaml", b"model: [sample:teacher\nsteps: {\n", "not valid YAML"),
    "recipe-json-syntax": ("r.json", b'{"model": "sample:teacher",}', "not valid JSON"),
    "recipe-steps-not-a-list": ("r.yaml", b"model: sample:teacher\nsteps: 5\n", "must be a list"),
    "recipe-model-a-number": ("r.yaml", b"model: 5\n", "model:"),
    "recipe-seqlen-a-string": ("r.yaml", b"model: sample:teacher\nevaluation: {seqlen: '16'}\n", "seqlen"),
    "recipe-unknown-key": ("r.yaml", b"model: sample:teacher\nmodle: x\n", "modle"),
    "recipe-step-params-not-a-mapping": ("r.yaml", b"model: sample:teacher\nsteps: [{prune: 5}]\n", "mapping"),
    "recipe-unknown-step": ("r.yaml", b"model: sample:teacher\nsteps: [{shrink: {}}]\n", "shrink"),
    "recipe-calibration-not-a-mapping": ("r.yaml", b"model: sample:teacher\ncalibration: 5\n", "calibration"),
}


def recipe_case(name: str, command: str = "run") -> Callable[[World], Case]:
    def build(world: World) -> Case:
        file_name, content, needle = RECIPES[name]
        path = world.file(file_name, content)
        if command == "export":
            out = world.tmp / "exported"
            return Case(["export", str(path), "--format", "hf", "--out", str(out)], (needle, file_name), out=out)
        return Case(["run", str(path)], (needle, file_name))

    return build


def recipe_folder(world: World) -> Case:
    (world.tmp / "r.yaml").mkdir()
    return Case(["run", str(world.tmp / "r.yaml")], ("folder",))


def recipe_missing(world: World) -> Case:
    return Case(["run", str(world.tmp / "absent.yaml")], ("absent.yaml", "does not exist"))


def recipe_with_binary_text(world: World) -> Case:
    text = world.file("eval.txt", noise(3000))
    recipe = world.file("r.yaml", f"model: sample:teacher\nevaluation: {{text: {text}}}\n".encode())
    return Case(["run", str(recipe)], ("eval.txt", "binary"))


# ---- the results store --------------------------------------------------------------------------


def store_case(damage: str, command: str) -> Callable[[World], Case]:
    def build(world: World) -> Case:
        db = world.results / "results.db"
        if damage == "dir-is-a-file":
            world.results.write_bytes(b"not a folder")
            needle = "is a file"
        elif damage == "under-a-file":
            (world.tmp / "blocker").write_bytes(b"x")
            world.results = world.tmp / "blocker" / "results"
            needle = "blocker"
        elif damage == "db-random":
            world.results.mkdir()
            db.write_bytes(noise(8192))
            needle = "Move it aside"
        elif damage == "db-truncated":
            world.store_with_a_row()
            db.write_bytes(db.read_bytes()[:5000])
            needle = "damaged"
        elif damage == "db-a-folder":
            db.mkdir(parents=True)
            needle = "is a folder"
        else:  # newer-schema: a database written by a later SqueezeLab
            world.store_with_a_row()
            with sqlite3.connect(db) as conn:
                conn.execute("PRAGMA user_version = 99")
            conn.close()
            needle = "upgrade SqueezeLab"
        argv = {"history": ["history"], "csv": ["history", "--csv"], "eval": ["eval", *FAST]}[command]
        return Case(argv, (needle,), store_intact=True)

    return build


# ---- export sources -----------------------------------------------------------------------------


def export_unknown_id(world: World) -> Case:
    out = world.tmp / "exported"
    return Case(["export", "20240101-000000-abcdef", "--format", "hf", "--out", str(out)],
                ("no result with id '20240101-000000-abcdef'", "squeezelab history"), out=out)


def export_unknown_id_beside_others(world: World) -> Case:
    world.store_with_a_row()
    out = world.tmp / "exported"
    return Case(["export", "20991231-235959-0a0b0c", "--format", "gguf", "--out", str(out)],
                ("no result with id",), out=out)


def export_out_is_a_file(world: World) -> Case:
    out = world.file("exported", b"keep me")
    return Case(["export", "sample:teacher", "--format", "hf", "--out", str(out)], ("already exists",))


def export_missing_recipe(world: World) -> Case:
    out = world.tmp / "exported"
    return Case(["export", str(world.tmp / "gone.yaml"), "--format", "hf", "--out", str(out)],
                ("gone.yaml", "does not exist"), out=out)


# ---- numbers on the command line ----------------------------------------------------------------

NUMBERS: dict[str, tuple[list[str], str]] = {
    "seqlen-1": (["eval", "--seqlen", "1"], "seqlen"),
    "seqlen-0": (["eval", "--seqlen", "0"], "seqlen"),
    "seqlen-negative": (["eval", "--seqlen", "-5"], "seqlen"),
    "seqlen-not-a-number": (["eval", "--seqlen", "sixteen"], "seqlen"),
    "max-windows-negative": (["eval", "--max-windows", "-1"], "max_windows"),
    "sparsity-above-1": (["prune", "--sparsity", "1.5"], "sparsity"),
    "sparsity-negative": (["prune", "--sparsity", "-0.1"], "sparsity"),
    "pattern-n-above-m": (["prune", "--sparsity", "0.5", "--pattern", "5:4"], "5:4"),
    "calib-samples-0": (["prune", "--method", "wanda", "--sparsity", "0.5", "--calib-samples", "0"], "samples"),
    "calib-seqlen-1": (["prune", "--method", "wanda", "--sparsity", "0.5", "--calib-seqlen", "1"], "seqlen"),
    "bits-0": (["quantize", "--bits", "0"], "bits"),
    "bits-99": (["quantize", "--bits", "99"], "bits"),
    "group-size-negative": (["quantize", "--group-size", "-1"], "group_size"),
    "distill-steps-0": (["distill", "--steps", "0"], "steps"),
    "distill-lr-negative": (["distill", "--lr", "-1"], "lr"),
    "distill-temperature-0": (["distill", "--temperature", "0"], "temperature"),
    "check-windows-negative": (["export", "sample:teacher", "--format", "hf", "--out", "x", "--check-windows", "-1"],
                               "check_windows"),
    "unknown-device": (["eval", "--device", "tpu"], "tpu"),
    "unknown-dtype": (["eval", "--dtype", "fp99"], "fp99"),
}


def with_fast(argv: list[str]) -> list[str]:
    """``argv`` plus the short evaluation options it does not set itself (export takes none of them)."""
    if argv[0] == "export":
        return argv
    pairs = [["--seqlen", "16"], ["--max-windows", "2"]]
    return [*argv, *[o for pair in pairs if pair[0] not in argv for o in pair], "--no-latency"]


def number_case(name: str) -> Callable[[World], Case]:
    def build(world: World) -> Case:
        argv, needle = NUMBERS[name]
        return Case(with_fast(argv), (needle,))

    return build


def model_seqlen_beyond_context(world: World) -> Case:
    return Case(["eval", "--seqlen", "100000", "--max-windows", "1", "--no-latency"], ("context",))


# ---- the battery --------------------------------------------------------------------------------

BATTERY: dict[str, Callable[[World], Case]] = {
    **{f"model-{name}": model_case(name) for name in MODEL_DAMAGE},
    "prune-model-weights-truncated": model_case("weights-truncated", "prune"),
    "quantize-model-config-not-json": model_case("config-not-json", "quantize"),
    "distill-teacher-tokenizer-garbled": model_case("tokenizer-garbled", "distill-teacher"),
    "export-model-weights-random": model_case("weights-random", "export"),
    **{f"gguf-{damage}": gguf_case(damage) for damage in ("random", "empty", "truncated", "header-only")},
    "gguf-a-folder": gguf_folder,
    "model-folder-without-config": folder_without_config,
    **{f"text-{name}": text_case(name) for name in TEXT_FILES},
    "prune-calib-text-binary": text_case("txt-binary", "--calib-text", "prune"),
    "quantize-calib-text-utf16": text_case("txt-utf16-bom", "--calib-text", "quantize"),
    "distill-train-text-latin1": text_case("txt-latin1", "--train-text", "distill"),
    **{name: recipe_case(name) for name in RECIPES},
    "export-recipe-latin1": recipe_case("recipe-latin1", "export"),
    "recipe-a-folder": recipe_folder,
    "recipe-missing": recipe_missing,
    "recipe-text-binary": recipe_with_binary_text,
    **{f"store-{damage}-{command}": store_case(damage, command)
       for damage, command in [("dir-is-a-file", "history"), ("dir-is-a-file", "eval"), ("under-a-file", "eval"),
                               ("db-random", "history"), ("db-random", "csv"), ("db-random", "eval"),
                               ("db-truncated", "history"), ("db-truncated", "eval"), ("db-a-folder", "history"),
                               ("newer-schema", "csv")]},
    "export-unknown-id": export_unknown_id,
    "export-unknown-id-beside-others": export_unknown_id_beside_others,
    "export-out-is-a-file": export_out_is_a_file,
    "export-missing-recipe": export_missing_recipe,
    **{f"number-{name}": number_case(name) for name in NUMBERS},
    "number-seqlen-beyond-context": model_seqlen_beyond_context,
}


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results and converted models stay under tmp_path, whatever a case passes or forgets to pass."""
    monkeypatch.setenv("SQUEEZELAB_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("SQUEEZELAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")




def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root`` with its content hash and modification time (empty if ``root`` is absent)."""
    if not root.is_dir():
        return {str(root): (hashlib.sha256(root.read_bytes()).hexdigest(), root.stat().st_mtime_ns)} \
            if root.is_file() else {}
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                       p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_the_battery_holds_at_least_60_cases() -> None:
    assert len(BATTERY) >= 60


@pytest.mark.parametrize("name", list(BATTERY))
def test_bad_input_exits_2_with_a_message_and_writes_nothing(name: str, tmp_path: Path, capsys) -> None:
    world = World(tmp_path, tmp_path / "results")
    case = BATTERY[name](world)
    results_before = tree(world.results)
    rows_before = set() if case.store_intact else {row.id for row in ResultStore(world.results, read_only=True).list()}
    capsys.readouterr()  # what building the case printed

    code = call([*case.argv, "--results-dir", str(world.results)])
    out, err = capsys.readouterr()

    assert code == EXIT_BAD_INPUT, err
    assert any(line.startswith("squeezelab: ") for line in err.splitlines()), err  # after any progress lines
    assert "Traceback" not in err, err
    for needle in case.needles:
        assert needle in err, err
    assert out == ""
    if case.out is not None:
        assert not case.out.exists(), "a refused export leaves no folder"
    if case.store_intact:
        assert tree(world.results) == results_before, "a broken store is left exactly as it was"
        return
    rows = [row for row in ResultStore(world.results, read_only=True).list() if row.id not in rows_before]
    if case.started:  # the model was loading: the run's one row records the refusal
        assert [row.status for row in rows] == ["failed"] and case.needles[0] in rows[0].error
    else:
        assert rows == [], "refused before the run: no row"
    artifacts = world.results / "artifacts"
    assert not artifacts.exists() or not any(p.name not in rows_before for p in artifacts.iterdir()), \
        "no artifact of a refused run"


# ---- the store: read-only commands write nothing; a damaged database is never changed -------------


@pytest.mark.parametrize("damage", ["random", "truncated", "zeroed-header"])
def test_history_of_a_damaged_database_exits_2_and_leaves_it_byte_identical(damage: str, tmp_path: Path,
                                                                               capsys) -> None:
    world = World(tmp_path, tmp_path / "results")
    db = world.store_with_a_row()
    data = db.read_bytes()
    db.write_bytes({"random": noise(len(data)), "truncated": data[:5000],
                    "zeroed-header": b"\0" * 100 + data[100:]}[damage])
    before, listing = tree(world.results), sorted(p.name for p in world.results.iterdir())
    for argv in (["history"], ["history", "--csv"], ["eval", *FAST]):
        code = call([*argv, "--results-dir", str(world.results)])
        out, err = capsys.readouterr()
        assert code == EXIT_BAD_INPUT and out == ""
        assert str(db) in err and "move it aside" in err.lower() and "Traceback" not in err
    assert tree(world.results) == before  # bytes and modification times
    assert sorted(p.name for p in world.results.iterdir()) == listing  # no -wal / -shm beside it


def test_history_creates_nothing(tmp_path: Path, capsys) -> None:
    absent, empty = tmp_path / "absent" / "results", tmp_path / "empty"
    empty.mkdir()
    for root in (absent, empty):
        for argv in (["history"], ["history", "--csv"]):
            assert call([*argv, "--results-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "no results yet" in out
    assert not (tmp_path / "absent").exists() and list(empty.iterdir()) == []


def test_history_reads_a_live_store_without_writing_to_it(tmp_path: Path, capsys) -> None:
    world = World(tmp_path, tmp_path / "results")
    world.store_with_a_row()
    before = tree(world.results)
    assert call(["history", "--results-dir", str(world.results)]) == 0
    assert "ok" in capsys.readouterr().out
    assert tree(world.results) == before


# ---- real processes: the exit code and the missing traceback end to end ---------------------------


def run_cli(args: list[str], tmp_path: Path, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}\nfrom core.cli import main\nraise SystemExit(main({args!r}))"
    env = {**os.environ, "SQUEEZELAB_RESULTS_DIR": str(tmp_path / "results"), "HF_HUB_OFFLINE": "1",
           "SQUEEZELAB_CACHE_DIR": str(tmp_path / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=180)


def test_a_binary_text_in_a_real_process_is_not_scored(tmp_path: Path) -> None:
    text = World(tmp_path, tmp_path / "results").file("random.txt", noise(4000))
    proc = subprocess.run([sys.executable, "-m", "core.cli", "eval", "--text", str(text), *FAST], cwd=REPO_ROOT,
                          env={**os.environ, "SQUEEZELAB_RESULTS_DIR": str(tmp_path / "results")},
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == EXIT_BAD_INPUT and "Traceback" not in proc.stderr
    assert "random.txt is binary data" in proc.stderr and "perplexity" not in proc.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE stands in for a full disk on Linux")
def test_a_full_disk_in_a_real_process(tmp_path: Path) -> None:
    # Every write past 0 bytes fails (EFBIG), as on a full disk; SIGXFSZ is ignored so the write just fails.
    prelude = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))")
    proc = run_cli(["eval", *FAST], tmp_path, prelude)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "Traceback" not in proc.stderr and "results.db" in proc.stderr and "disk" in proc.stderr


# ---- dashboard uploads ----------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "needle"), [
    (noise(3000), "binary data"),
    (("café " + TEXT).encode("latin-1"), "iconv -f latin1"),
    (TEXT.encode("utf-16"), "UTF-16"),
    (b"", "empty"),
    (bytes(range(1, 9)) * 500, "control characters"),
])
def test_an_upload_that_is_not_text_is_refused(content: bytes, needle: str) -> None:
    from ui import sources

    with pytest.raises(TextSourceError, match=needle) as info:
        sources.save_upload("notes.txt", content)
    assert "notes.txt" in str(info.value)


def test_uploads_go_to_a_private_folder_of_this_process() -> None:
    import tempfile

    from ui import sources

    first = sources.save_upload("../../etc/notes.txt", TEXT.encode())
    again = sources.save_upload("notes.txt", TEXT.encode())
    folder = sources.upload_dir()
    assert first.parent == folder and again == first  # one file per content, inside the folder
    assert folder != Path(tempfile.gettempdir()) / "squeezelab-uploads"  # not the old shared, guessable name
    assert folder.stat().st_mode & 0o777 == 0o700
    assert first.read_text() == TEXT


def test_export_of_a_result_whose_stored_recipe_is_damaged(tmp_path: Path, capsys) -> None:
    world = World(tmp_path, tmp_path / "results")
    world.store_with_a_row()
    run_id = ResultStore(world.results, read_only=True).list()[0].id
    with sqlite3.connect(world.results / "results.db") as conn:
        conn.execute("UPDATE results SET recipe = ? WHERE id = ?", ("model: [unclosed\n", run_id))
    conn.close()
    out = tmp_path / "exported"
    code = call(["export", run_id, "--format", "hf", "--out", str(out), "--results-dir", str(world.results)])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "Traceback" not in err
    assert f"the recipe stored with result {run_id}" in err and not out.exists()
