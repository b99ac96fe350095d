"""Checks before any weights load or any row is written: the steps played on the model's shapes, and every count
bounded by the text it reads and the memory that is free.

Each case runs ``squeezelab run`` on a recipe and asserts exit code 2, the message on stderr, an empty store, and
that no weights were loaded (the loaders are replaced by functions that record the call and fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import core.distill.students
import core.models.loading
import core.recipe.pipeline
from core import data, models
from core.cli import main
from core.errors import SpecError
from core.export import ExportSpec, export_model
from core.export import files as export_files
from core.quantize import QuantizeSpec, quantize_
from core.recipe import Recipe, Step, pipeline, preflight
from core.recipe import bounds as bounds_module
from core.store import ResultStore
from tests.helpers import pickle_only_folder, remote_code_folder, tiny_tokenizer

TEACHER = "sample:teacher"  # Llama: hidden 192, MLP 512, 6 blocks, 6 heads in 3 KV groups, context 256, vocab 4096
QUICK_EVAL = {"max_windows": 2, "seqlen": 64, "latency": False}
GB = 10**9


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Every attempt to load weights, recorded; each fails, so a run that gets that far exits 1, not 2."""
    calls: list[str] = []

    def refuse(where: str):
        def loader(*args, **_kwargs):
            calls.append(f"{where}{args[:1]}")
            raise AssertionError(f"weights were loaded by {where}")
        return loader

    monkeypatch.setattr(core.models.loading, "load", refuse("core.models.loading.load"))
    monkeypatch.setattr(core.models.loading, "_load_weights", refuse("core.models.loading._load_weights"))
    monkeypatch.setattr(core.recipe.pipeline, "load", refuse("core.recipe.pipeline.load"))
    monkeypatch.setattr(core.distill.students, "load", refuse("core.distill.students.load"))
    return calls


def refused(tmp_path: Path, capsys, recipe: dict, loads: list[str]) -> str:
    """Run ``recipe`` through the command line; assert exit 2, no row, no load; return the message."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"evaluation": QUICK_EVAL, **recipe}))
    results = tmp_path / "results"
    code = main(["run", str(path), "--results-dir", str(results)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("squeezelab: ") and "Traceback" not in err and out == ""
    assert loads == []
    assert ResultStore(results).list() == []
    return " ".join(err.split())


def free_memory(monkeypatch, gigabytes: float) -> None:
    monkeypatch.setattr(preflight, "free_memory_bytes", lambda _device: int(gigabytes * GB))


# ---- counts bounded by the text and the memory ----


def test_calibration_beyond_the_text_names_the_tokens_and_what_fits(tmp_path, capsys, loads) -> None:
    message = refused(tmp_path, capsys, {"model": TEACHER, "calibration": {"samples": 100_000_000_000},
                                         "steps": [{"quantize": {"method": "gptq", "bits": 4}}]}, loads)
    assert "calibration asks for 100,000,000,000 windows of 256 tokens (25,600,000,000,000 tokens, ≈" in message
    assert "GB held by the block-by-block walk)" in message
    assert "the calibration text 'default (sample-train)' has 1,205,221 tokens" in message  # counted: near the limit
    assert "use at most 4,707 samples at seqlen 256, or a longer text" in message


def test_calibration_beyond_free_memory_names_the_memory_and_what_fits(tmp_path, capsys, loads, monkeypatch) -> None:
    free_memory(monkeypatch, 1.0)  # the walk holds ~0.46 MB a sample at seqlen 256 on this model
    message = refused(tmp_path, capsys, {"model": TEACHER, "calibration": {"samples": 4000},
                                         "steps": [{"prune": {"method": "wanda", "sparsity": 0.5}}]}, loads)
    assert "calibration asks for 4,000 windows of 256 tokens" in message
    assert "cpu has 1.0 GB free, 0.7 GB of it beyond the weights and PyTorch's own working memory" in message
    assert "or a smaller seqlen" in message
    fits = int(message.split("use at most ")[1].split(" samples")[0].replace(",", ""))
    assert 1000 < fits < 4000


def test_calibration_windows_longer_than_the_text(tmp_path, capsys, loads, text_file) -> None:
    message = refused(tmp_path, capsys, {"model": TEACHER, "calibration": {"text": str(text_file), "samples": 4},
                                         "steps": [{"quantize": {"method": "gptq"}}]}, loads)
    assert "calibration asks for 4 windows of 256 tokens (1,024 tokens, ≈" in message
    assert "eval.txt' has 959 tokens" in message and "use at most 3 samples at seqlen 256, or a longer text" in message
    short = tmp_path / "short.txt"
    short.write_text("def x(): return 1\n", encoding="utf-8")
    message = refused(tmp_path, capsys, {"model": TEACHER, "calibration": {"text": str(short)},
                                         "steps": [{"quantize": {"method": "gptq"}}]}, loads)
    assert "short.txt' has" in message and "one window of seqlen=256 needs more" in message


def test_an_evaluation_seqlen_beyond_the_context_or_the_memory(tmp_path, capsys, loads, monkeypatch) -> None:
    message = refused(tmp_path, capsys, {"model": TEACHER, "evaluation": {"seqlen": 1024}}, loads)
    assert "evaluation.seqlen=1024 is longer than the model's context (256 tokens); use at most 256" in message
    free_memory(monkeypatch, 0.32)  # 0.3 GB for PyTorch itself, 13 MB of weights, scoring 256 tokens ~16 MB
    message = refused(tmp_path, capsys, {"model": TEACHER, "evaluation": {"seqlen": 256, "latency": False}}, loads)
    assert "evaluation windows of 256 tokens need ≈" in message
    fits = int(message.split("use an evaluation seqlen of at most ")[1].split()[0])
    assert 2 <= fits < 256


def test_latency_tokens_beyond_the_context_and_runs_beyond_the_cap(tmp_path, capsys, loads) -> None:
    message = refused(tmp_path, capsys, {"model": TEACHER, "evaluation": {"prompt_tokens": 10**9}}, loads)
    assert "evaluation.prompt_tokens=1,000,000,000 is longer than the model's context (256 tokens)" in message
    message = refused(tmp_path, capsys, {"model": TEACHER, "evaluation": {"latency_runs": 10**6}}, loads)
    assert "evaluation.latency_runs=1,000,000 is more than 1000" in message


@pytest.mark.parametrize(("distill", "needle"), [
    ({"steps": 10**9}, "steps=1,000,000,000 is more than 1,000,000: every step keeps a record"),
    ({"batch_size": 10**6, "seqlen": 256}, "one batch needs batch_size x seqlen = 1000000 x 256 = 256,000,000"),
    ({"eval_windows": 10**6, "seqlen": 256}, "the held-out tail 1000000 x 256 = 256,000,000"),
    ({"seed": 2**70}, "seed must be at most 2^64 - 1"),
])
def test_distillation_counts_beyond_the_text_or_the_record(tmp_path, capsys, loads, distill, needle) -> None:
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": [{"distill": {"steps": 2, **distill}}]}, loads)
    assert needle in message


def test_a_distillation_batch_beyond_free_memory_says_what_fits(tmp_path, capsys, loads, monkeypatch) -> None:
    free_memory(monkeypatch, 0.5)
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": [{"distill": {"steps": 2, "batch_size": 512,
                                                                                  "seqlen": 256}}]}, loads)
    assert "distillation trains on 512 windows of 256 tokens a step, which needs ≈" in message
    fits = int(message.split("use a batch_size of at most ")[1].split(",")[0])
    assert 1 <= fits < 512


# ---- the model itself, from what its reference points at ----


@pytest.mark.parametrize(("case", "needle"), [
    ("hub", "cannot reach the Hugging Face Hub to fetch 'org/name', and it is not in the local cache"),
    ("pickle", "has weights only in pickle format (pytorch_model.bin); unpickling can run code"),
    ("remote-code", "needs its own Python code from the repository"),
])
def test_a_model_that_cannot_be_loaded_safely_is_refused_from_its_files(tmp_path, capsys, loads, monkeypatch, case,
                                                                       needle) -> None:
    monkeypatch.setattr(core.models.loading, "hub_reachable", lambda *_args: False)
    model = {"hub": "org/name", "pickle": str(pickle_only_folder(tmp_path / "pickled")),
             "remote-code": str(remote_code_folder(tmp_path / "custom"))}[case]
    assert needle in refused(tmp_path, capsys, {"model": model}, loads)


# ---- the steps, checked on the model's shapes ----


@pytest.mark.parametrize(("step", "needle"), [
    ({"quantize": {"method": "rtn", "bits": 4, "group_size": 96}},
     "group_size 96 does not divide the 512 input columns of model.layers.0.mlp.down_proj"),
    ({"prune": {"method": "magnitude", "pattern": "2:3"}},
     "a 2:3 pattern groups 3 consecutive input columns, but model.layers.0.mlp.down_proj has 512 input columns"),
    ({"prune": {"method": "magnitude", "sparsity": 0.5, "include": ["*.nothing"]}},
     "no linear layer in the decoder blocks matches include=['*.nothing']"),
    ({"prune": {"method": "structured", "target": "layers", "layers": [2, 7]}},
     "layers [2, 7] name a block past the last one (the model has blocks 0..5)"),
    ({"distill": {"student": "layer_drop", "keep_layers": [0, 9]}},
     "keep_layers [0, 9] names a block past the last one (blocks 0..5)"),
    ({"distill": {"student": "sample:nobody"}}, "no bundled sample model 'sample:nobody'"),
    ({"distill": {"hidden_weight": 1.0, "hidden_layers": [[0, 9]]}},
     "hidden_layers [[0, 9]] name blocks that do not exist (student blocks 0..5, teacher blocks 0..5)"),
])
def test_step_settings_the_model_cannot_take(tmp_path, capsys, loads, step, needle) -> None:
    assert needle in refused(tmp_path, capsys, {"model": TEACHER, "steps": [step]}, loads)


def test_a_later_step_is_checked_on_the_shapes_an_earlier_one_leaves(tmp_path, capsys, loads) -> None:
    """Narrowing the MLP from 512 to 384 channels makes a group of 256 fit nowhere in down_proj."""
    steps = [{"prune": {"method": "structured", "target": "mlp_channels", "fraction": 0.25}},
             {"quantize": {"method": "rtn", "bits": 4, "group_size": 256, "include": ["*.down_proj"]}}]
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": steps}, loads)
    assert "group_size 256 does not divide the 384 input columns of model.layers.0.mlp.down_proj" in message


def test_a_student_with_another_vocabulary_is_refused_before_loading(tmp_path, capsys, loads, llama) -> None:
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": [{"distill": {"student": llama, "steps": 2}}]},
                      loads)
    assert "teacher and student do not share a vocabulary (the teacher predicts over 4096 tokens" in message


def test_an_export_format_the_architecture_or_the_schemes_cannot_take(tmp_path, capsys, loads, tiny_models) -> None:
    message = refused(tmp_path, capsys, {"model": str(tiny_models["opt"]), "export": {"format": "gguf"}}, loads)
    assert "GGUF export cannot write a 'opt' model" in message
    steps = [{"quantize": {"method": "rtn", "bits": 8}}]
    message = refused(tmp_path, capsys, {"model": TEACHER, "steps": steps,
                                         "export": {"format": "gguf", "gguf_type": "Q4_0"}}, loads)
    assert "cannot be written as Q4_0" in message and "Q8_0 holds them exactly" in message


def test_an_occupied_unwritable_or_full_export_target(tmp_path, capsys, loads, monkeypatch) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    message = refused(tmp_path, capsys, {"model": TEACHER, "export": {"format": "hf", "path": str(tmp_path / "taken")}},
                      loads)
    assert "taken already exists; choose another path or set overwrite: true" in message
    message = refused(tmp_path, capsys, {"model": TEACHER, "export": {"format": "hf", "overwrite": True,
                                                                      "path": str(tmp_path / "taken")}}, loads)
    assert "holds files SqueezeLab did not write (e.g. mine.txt)" in message
    (tmp_path / "file").write_text("x")
    below_a_file = str(tmp_path / "file" / "sub" / "m")
    message = refused(tmp_path, capsys, {"model": TEACHER, "export": {"format": "hf", "path": below_a_file}}, loads)
    assert "is a file, not a folder" in message and not (tmp_path / "file" / "sub").exists()
    monkeypatch.setattr(export_files.shutil, "disk_usage", lambda _path: type("Usage", (), {"free": 1000})())
    message = refused(tmp_path, capsys, {"model": TEACHER, "export": {"format": "hf", "path": str(tmp_path / "new")}},
                      loads)
    assert "MB free but this export needs" in message and not (tmp_path / "new").exists()


def test_an_exported_model_keeps_its_packed_layers_in_the_checks(tmp_path, capsys, request) -> None:
    """A folder in SqueezeLab's own form is read back with its schemes: asymmetric codes cannot go to
    compressed-tensors, and that is known from config.json alone."""
    teacher = models.load(TEACHER)
    model = models.clone(teacher.model)
    quantize_(model, QuantizeSpec(method="rtn", bits=4, group_size=64, symmetric=False))
    windows = torch.zeros(1, 16, dtype=torch.long)
    export_model(model, teacher.tokenizer, ExportSpec(check_windows=1), windows, out=tmp_path / "q4")
    assert json.loads((tmp_path / "q4" / "config.json").read_text())["quantization_config"]["quant_method"]
    message = refused(tmp_path, capsys, {"model": str(tmp_path / "q4"), "export": {"format": "compressed-tensors"}},
                      request.getfixturevalue("loads"))
    assert "compressed-tensors cannot hold the asymmetric scheme" in message


def test_a_base_the_caller_holds_is_checked_without_loading_again(tmp_path) -> None:
    teacher = models.load(TEACHER)
    store = ResultStore(tmp_path / "results")
    recipe = Recipe(model=TEACHER, steps=(Step("quantize", {"method": "rtn", "group_size": 96}),))
    with pytest.raises(SpecError, match="group_size 96 does not divide the 512 input columns"):
        pipeline.run(recipe, store, base=teacher)
    assert store.list() == []


# ---- the counting itself ----


def test_a_long_text_is_estimated_only_when_far_from_the_limit(monkeypatch) -> None:
    tokenizer = tiny_tokenizer()
    text = "\n".join(f"def value_{i}(x): return x * {i}" for i in range(60_000))  # ~2 MB
    total = int(data.tokenize(tokenizer, text).numel())
    monkeypatch.setattr(data, "load_text", lambda *_args, **_kwargs: data.Text("t", text))
    far = bounds_module.count_tokens(tokenizer, "t", "t", needed=1000)
    near = bounds_module.count_tokens(tokenizer, "t", "t", needed=total)
    assert not far.exact and abs(far.tokens - total) < 0.05 * total
    assert near.exact and near.tokens == total
    assert far.describe("training") == f"the training text 't' has about {far.tokens:,} tokens"
