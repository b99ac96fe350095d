"""Export: every format written, reloaded from disk and re-evaluated; sparse storage; clean failure; bad input.

Round trips run on the bundled sample teacher (Llama, tied embeddings, 3.2M parameters), so each
takes about a second; the kill test runs an export in a child process and kills it half-way.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core import data, models
from core.errors import CancelledError, ExportError, SpecError
from core.evaluate import EvalSpec, measure_size
from core.export import ExportSpec, export_model, load_exported, remove_abandoned, writable_formats
from core.export import files as export_files
from core.export.gguf import _blocks, exact_types
from core.models.sparse import from_sparse, sparse_bytes, to_sparse, worth_sparse
from core.prune import PruneSpec, prune_
from core.quantize import QuantizeSpec, QuantScheme, choose_kernels, quantize_, rtn_quantize
from core.quantize.qembedding import TiedQuantEmbedding
from core.quantize.qlinear import QuantLinear
from core.recipe import Recipe, Step, pipeline
from core.store import ResultStore
from tests.helpers import tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
Q4_G64_EMBED8 = {"method": "rtn", "bits": 4, "group_size": 64, "lm_head": True,
                 "overrides": [{"pattern": "lm_head", "bits": 8, "group_size": 0}]}
TINY_EVAL = EvalSpec(max_windows=2, seqlen=64, latency=False)


@pytest.fixture(scope="module")
def teacher() -> models.LoadedModel:
    return models.load("sample:teacher")


@pytest.fixture(scope="module")
def windows(teacher) -> torch.Tensor:
    ids = data.tokenize(teacher.tokenizer, data.load_text("sample", default="sample").text)
    return data.windows(ids, 64, 3)


def quantized(teacher, params: dict) -> torch.nn.Module:
    model = models.clone(teacher.model)
    quantize_(model, QuantizeSpec.from_dict(params))
    return model


def export(model, teacher, windows, out: Path, **spec) -> object:
    return export_model(model, teacher.tokenizer, ExportSpec(**spec), windows, out=out)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---- the math: sparse storage, GGUF blocks, the tied quantized embedding ----


def test_sparse_storage_round_trips_and_is_smaller_only_when_sparse() -> None:
    torch.manual_seed(0)
    weight = torch.randn(37, 29)
    weight[torch.rand_like(weight) < 0.5] = 0.0
    packed = to_sparse(weight)
    assert packed.mask.dtype == torch.uint8 and packed.mask.numel() == (37 * 29 + 7) // 8
    assert torch.equal(from_sparse(packed.mask, packed.values, packed.shape), weight)
    assert packed.nbytes == sparse_bytes(weight.numel(), int(torch.count_nonzero(weight)), 4) < weight.numel() * 4
    assert worth_sparse(weight) and not worth_sparse(torch.randn(37, 29))
    with pytest.raises(ValueError, match="damaged"):
        from_sparse(packed.mask, packed.values[:-1], packed.shape)


def test_gguf_block_types_hold_exactly_the_schemes_they_can() -> None:
    assert exact_types(QuantScheme(4, 64, True), 192) == ["Q4_0", "Q4_1", "Q8_0"]
    assert exact_types(QuantScheme(3, 32, True), 192) == ["Q4_0", "Q4_1", "Q8_0"]  # 3-bit codes fit 4-bit blocks
    assert exact_types(QuantScheme(4, 32, False), 192) == ["Q4_1", "Q8_0"]
    assert exact_types(QuantScheme(8, None, True), 192) == ["Q8_0"]
    assert exact_types(QuantScheme(8, None, False), 192) == []
    assert exact_types(QuantScheme(4, 16, True), 192) == []  # two scales in one block of 32
    assert exact_types(QuantScheme(4, None, True), 48) == []  # a row of 48 is not whole blocks


@pytest.mark.parametrize(("scheme", "kind"), [(QuantScheme(4, 64, True), "Q4_0"), (QuantScheme(3, 32, False), "Q4_0"),
                                              (QuantScheme(4, 32, False), "Q4_1"), (QuantScheme(8, None, True), "Q8_0"),
                                              (QuantScheme(5, 32, True), "Q8_0")])
def test_gguf_blocks_decode_to_the_layers_weights(scheme: QuantScheme, kind: str) -> None:
    import gguf

    torch.manual_seed(1)
    layer = QuantLinear.from_matrix(rtn_quantize(torch.randn(8, 128), scheme), scheme, None, torch.float32)
    decoded = gguf.quants.dequantize(_blocks(layer, kind), gguf.GGMLQuantizationType[kind])
    expected = layer.dequantized_weight().numpy()
    tolerance = 1e-3 * np.abs(expected).max() if kind == "Q4_1" else 0.0  # Q4_1's offset is rounded to fp16
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=tolerance)


def test_a_quantized_lm_head_keeps_the_tied_embedding_tied_and_stored_once(teacher) -> None:
    model = quantized(teacher, Q4_G64_EMBED8)
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, TiedQuantEmbedding) and embedding.head is model.lm_head
    ids = torch.tensor([[0, 5, 4095, 17]])
    assert torch.equal(embedding(ids)[0], model.lm_head.dequantized_weight()[ids[0]])
    size = measure_size(model)
    assert size.params == measure_size(teacher.model).params  # the [vocab, hidden] matrix counted once
    assert all(p.shape != (4096, 192) for p in model.parameters())  # no float copy of the matrix is left
    copy = models.clone(model)
    assert copy.get_input_embeddings().head is copy.lm_head  # a deep copy keeps the tie to its own head


# ---- round trips on the sample teacher ----


@pytest.mark.parametrize("fmt", ["hf", "compressed-tensors"])
def test_what_stays_unquantized_is_written_in_16_bits_by_default(teacher, windows, tmp_path: Path, fmt) -> None:
    from safetensors import safe_open

    model = quantized(teacher, {"method": "rtn", "bits": 4, "group_size": 64})  # lm_head and embedding stay float
    result = export(model, teacher, windows, tmp_path / "default", format=fmt)
    assert result.check_passed and result.dtype == "float16"
    wide = export(model, teacher, windows, tmp_path / "fp32", format=fmt, dtype="fp32")
    assert wide.dtype == "float32" and result.weights_bytes < wide.weights_bytes
    if fmt == "hf":  # stored in 16 bits, reloaded in the dtype the model ran in
        assert load_exported(tmp_path / "default").model.model.norm.weight.dtype == torch.float32
    for path in (tmp_path / "default").glob("*.safetensors"):
        with safe_open(str(path), "pt") as tensors:
            floats = {tensor.dtype for tensor in map(tensors.get_tensor, tensors.keys()) if tensor.is_floating_point()}
        assert floats <= {torch.float16}, floats


def test_hf_folder_of_a_quantized_model_reloads_to_the_same_outputs(teacher, windows, tmp_path: Path) -> None:
    model = quantized(teacher, Q4_G64_EMBED8)
    result = export(model, teacher, windows, tmp_path / "q4", dtype="fp32")  # the norms as they are: exact
    assert result.check_passed and result.squeezelab_format and result.tokenizer_match
    assert result.perplexity_after == pytest.approx(result.perplexity_before, rel=1e-6)
    files = leftovers(tmp_path / "q4")
    assert {"config.json", "squeezelab.safetensors", "squeezelab.json", "README.md", "tokenizer.json"} <= set(files)
    config = json.loads((tmp_path / "q4" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "squeezelab"
    assert config["quantization_config"]["modules"]["lm_head"] == {"bits": 8, "group_size": None, "symmetric": True}
    reloaded = load_exported(tmp_path / "q4", kernel="dequant")
    assert isinstance(reloaded.model.get_input_embeddings(), TiedQuantEmbedding)
    choose_kernels(model, "dequant")
    with torch.no_grad():
        assert torch.equal(model(windows[:1]).logits, reloaded.model(windows[:1]).logits)
    assert isinstance(models.load(str(tmp_path / "q4")).model.lm_head, QuantLinear)  # a model reference too
    from transformers import AutoModelForCausalLM

    with pytest.raises(OSError, match="model.safetensors"):  # never random weights in place of the packed ones
        AutoModelForCausalLM.from_pretrained(tmp_path / "q4")
    card = (tmp_path / "q4" / "README.md").read_text()
    assert "load_exported" in card and "passed" in card
    record = json.loads((tmp_path / "q4" / "squeezelab.json").read_text())
    assert record["export"]["check_passed"] and record["versions"]["torch"] == torch.__version__


def test_the_check_reuses_a_measured_perplexity_only_for_the_same_windows_and_math(teacher, windows,
                                                                                   tmp_path: Path) -> None:
    """A perplexity the caller just measured stands for "before" only when the check would score the
    same windows with the same exact math; otherwise the check measures it itself."""
    measured = 123.0  # deliberately not the model's: shows which "before" the check used
    exact = quantized(teacher, {**Q4_G64_EMBED8, "kernel": "dequant"})
    reused = export_model(exact, teacher.tokenizer, ExportSpec(format="hf"), windows, out=tmp_path / "a",
                          perplexity_before=measured)
    assert reused.perplexity_before == measured and not reused.check_passed  # 123 is far from the reload's
    subset = export_model(exact, teacher.tokenizer, ExportSpec(format="hf", check_windows=1), windows,
                          out=tmp_path / "b", perplexity_before=measured)
    assert subset.perplexity_before != measured and subset.check_passed
    fast = quantized(teacher, Q4_G64_EMBED8)
    assert any(m.kernel != "dequant" for m in fast.modules() if isinstance(m, QuantLinear))
    own = export_model(fast, teacher.tokenizer, ExportSpec(format="hf"), windows, out=tmp_path / "c",
                       perplexity_before=measured)
    assert own.perplexity_before != measured and own.check_passed


def test_hf_folder_of_a_dense_model_is_a_plain_transformers_folder(teacher, windows, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    result = export(teacher.model, teacher, windows, tmp_path / "fp32")
    assert result.check_passed and not result.squeezelab_format
    assert result.perplexity_after == result.perplexity_before
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32")
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), teacher.model.state_dict().values(),
                                                  strict=True))


def test_compressed_tensors_reloads_in_transformers(teacher, windows, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = quantized(teacher, {"method": "rtn", "bits": 4, "group_size": 64})
    result = export(model, teacher, windows, tmp_path / "ct", format="compressed-tensors")
    assert result.check_passed and result.tokenizer_match
    assert result.perplexity_after == pytest.approx(result.perplexity_before, rel=1e-3)
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    weights = config["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (4, 64, True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ct", dtype=torch.float32)
    choose_kernels(model, "dequant")
    with torch.no_grad():  # the first forward decompresses the packed weights
        assert torch.allclose(reloaded(windows[:1]).logits, model(windows[:1]).logits, atol=0.05)
    layer = "model.layers.0.mlp.up_proj"
    assert torch.allclose(reloaded.get_submodule(layer).weight, model.get_submodule(layer).dequantized_weight())


def test_gguf_holds_quantized_layers_exactly(teacher, windows, tmp_path: Path) -> None:
    from gguf import GGUFReader

    model = quantized(teacher, Q4_G64_EMBED8)
    result = export(model, teacher, windows, tmp_path / "gguf", format="gguf", gguf_type="Q4_0", zip=True)
    assert result.check_passed and result.tokenizer_match and not result.lossy
    assert result.perplexity_after == pytest.approx(result.perplexity_before, rel=1e-5)
    reader = GGUFReader(tmp_path / "gguf" / result.gguf_file)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.ffn_up.weight"] == "Q4_0" and types["token_embd.weight"] == "Q8_0"
    assert "output.weight" not in types  # tied: llama.cpp reads the embedding
    assert result.weights_bytes == pytest.approx(result.promised_bytes, rel=0.10)  # + the vocabulary
    reloaded = load_exported(tmp_path / "gguf")
    assert reloaded.source.gguf_file == result.gguf_file
    assert (tmp_path / "gguf.zip").is_file() and result.zip_bytes == (tmp_path / "gguf.zip").stat().st_size


def test_gguf_of_a_float_model_is_quantized_by_gguf_and_checked_against_that(teacher, windows, tmp_path: Path) -> None:
    result = export(teacher.model, teacher, windows, tmp_path / "q8", format="gguf", gguf_type="Q8_0")
    assert result.lossy and result.reference_perplexity is not None and result.check_passed
    assert result.perplexity_after == pytest.approx(result.reference_perplexity, rel=1e-4)
    assert any("quantized to Q8_0" in note for note in result.notes)


def test_4bit_artifact_is_at_most_35_percent_of_fp16(teacher, windows, tmp_path: Path) -> None:
    fp16 = models.clone(teacher.model).half()
    dense = export(fp16, teacher, windows, tmp_path / "fp16")
    small = export(quantized(teacher, Q4_G64_EMBED8), teacher, windows, tmp_path / "q4")
    assert small.weights_bytes <= 0.35 * dense.weights_bytes
    for result in (dense, small):
        assert result.weights_bytes == pytest.approx(result.promised_bytes, rel=0.05)


def test_a_pruned_model_stored_sparse_is_smaller_than_dense_fp16(teacher, windows, tmp_path: Path) -> None:
    model = models.clone(teacher.model)
    prune_(model, PruneSpec.from_dict({"method": "magnitude", "sparsity": 0.5}))
    sparse = export(model, teacher, windows, tmp_path / "sparse", dtype="fp16")
    dense = export(model, teacher, windows, tmp_path / "dense", dtype="fp16", sparse=False)
    assert sparse.check_passed and dense.check_passed and sparse.squeezelab_format
    assert sparse.weights_bytes < 0.75 * dense.weights_bytes
    reloaded = load_exported(tmp_path / "sparse", dtype="fp32").model
    layer = "model.layers.2.mlp.down_proj.weight"
    assert torch.equal(reloaded.state_dict()[layer], model.state_dict()[layer].half().float())


# ---- nothing half-written: cancel, failure, kill ----


def test_a_cancelled_export_leaves_nothing(teacher, windows, tmp_path: Path) -> None:
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3  # after the weights are written, during the check

    with pytest.raises(CancelledError):
        export_model(teacher.model, teacher.tokenizer, ExportSpec(format="gguf", zip=True), windows,
                     out=tmp_path / "out" / "model", cancel=cancel)
    assert leftovers(tmp_path / "out") == []


def test_a_full_disk_while_zipping_leaves_nothing(teacher, windows, tmp_path: Path, monkeypatch) -> None:
    import core.export.export as export_module

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "zip_folder", full)
    with pytest.raises(ExportError, match="full"):
        export(teacher.model, teacher, windows, tmp_path / "out" / "model", zip=True)
    assert leftovers(tmp_path / "out") == []


def test_a_killed_export_leaves_no_folder_or_zip(tmp_path: Path) -> None:
    marker = tmp_path / "writing"
    script = textwrap.dedent(f"""
        import time, torch
        from pathlib import Path
        from core import data, models
        from core.export import ExportSpec, export_model
        loaded = models.load("sample:teacher")
        ids = data.tokenize(loaded.tokenizer, data.load_text("sample", default="sample").text)
        def stall(stage, fraction):
            if stage == "export: reload":  # the weights are on disk, in the scratch folder
                Path({str(marker)!r}).touch()
                time.sleep(600)
        export_model(loaded.model, loaded.tokenizer, ExportSpec(zip=True), data.windows(ids, 64, 2),
                     out={str(tmp_path / "out" / "model")!r}, on_progress=stall)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300  # a busy machine: starting python and torch can take a while
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"the child never reached the reload (exit code {child.poll()})"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    left = leftovers(tmp_path / "out")
    assert left and all(name.startswith(".model") for name in left)  # hidden scratch only: no folder, no zip
    assert remove_abandoned(tmp_path / "out") == len(left)
    assert leftovers(tmp_path / "out") == []


# ---- bad input: clear errors, nothing written ----


def test_a_format_the_architecture_cannot_be_written_in_names_those_that_can(tiny, tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer()
    reasons = writable_formats(tiny["opt"], tokenizer)
    assert reasons["hf"] is None and reasons["compressed-tensors"] is None
    assert "GGUF export cannot write a 'opt' model" in reasons["gguf"] and "hf, compressed-tensors" in reasons["gguf"]
    with pytest.raises(SpecError, match="GGUF export cannot write a 'opt' model"):
        export_model(tiny["opt"], tokenizer, ExportSpec(format="gguf"), torch.zeros(1, 8, dtype=torch.long),
                     out=tmp_path / "out" / "m")
    assert leftovers(tmp_path / "out") == []


def test_8bit_into_q4_0_says_so_and_offers_the_nearest(teacher, windows, tmp_path: Path) -> None:
    model = quantized(teacher, {"method": "rtn", "bits": 8})
    with pytest.raises(SpecError, match=r"cannot be written as Q4_0.*Q8_0 holds them exactly.*requantize"):
        export(model, teacher, windows, tmp_path / "out" / "m", format="gguf", gguf_type="Q4_0")
    assert leftovers(tmp_path / "out") == []
    again = export(model, teacher, windows, tmp_path / "out" / "m", format="gguf", gguf_type="Q4_0", requantize=True)
    assert again.lossy and again.check_passed and any("re-rounded" in note for note in again.notes)


def test_group_16_has_no_gguf_block_type(teacher, windows, tmp_path: Path) -> None:
    model = quantized(teacher, {"method": "rtn", "bits": 4, "group_size": 16})
    with pytest.raises(SpecError, match="no GGUF block type holds them exactly.*F16"):
        export(model, teacher, windows, tmp_path / "m", format="gguf")


def test_asymmetric_into_compressed_tensors_names_what_can(teacher, windows, tmp_path: Path) -> None:
    model = quantized(teacher, {"method": "rtn", "bits": 4, "group_size": 64, "symmetric": False})
    with pytest.raises(SpecError, match="asymmetric.*format hf"):
        export(model, teacher, windows, tmp_path / "m", format="compressed-tensors")
    assert not (tmp_path / "m").exists()


def test_unwritable_occupied_or_full_paths_are_refused_before_work(teacher, windows, tmp_path: Path,
                                                                   monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match="cannot create the folder"):
        export(teacher.model, teacher, windows, blocker / "model")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="already exists.*overwrite"):
        export(teacher.model, teacher, windows, tmp_path / "taken")
    assert export(teacher.model, teacher, windows, tmp_path / "taken", overwrite=True).check_passed
    monkeypatch.setattr(export_files.os, "access", lambda *_args: False)
    with pytest.raises(ExportError, match="permission denied"):
        export(teacher.model, teacher, windows, tmp_path / "denied")
    monkeypatch.undo()
    monkeypatch.setattr(export_files.shutil, "disk_usage", lambda _path: type("Usage", (), {"free": 1000})())
    with pytest.raises(ExportError, match="MB free but this export needs"):
        export(teacher.model, teacher, windows, tmp_path / "full")
    assert not (tmp_path / "denied").exists() and not (tmp_path / "full").exists()


@pytest.mark.parametrize(("raw", "message"), [
    ({"format": "onnx"}, "unknown export format 'onnx'"),
    ({"format": "hf", "gguf_type": "Q4_0"}, "gguf only"),
    ({"format": "gguf", "dtype": "fp16"}, "not dtype"),
    ({"format": "compressed-tensors", "sparse": True}, "format hf only"),
    ({"format": "hf", "colour": "red"}, "unknown key"),
    ({"format": "hf", "tolerance": 2}, "tolerance"),
])
def test_bad_export_sections_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ExportSpec.from_dict(raw)


# ---- wired in: the recipe's export section and the CLI ----


def test_a_recipe_export_section_records_the_artifact_on_disk(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "results")
    recipe = Recipe(model="sample:teacher", steps=(Step("quantize", Q4_G64_EMBED8),), evaluation=TINY_EVAL,
                    export={"format": "gguf", "zip": True})
    row = pipeline.run(recipe, store)
    exported = row.details["export"]
    assert exported["check_passed"] and row.size_bytes == exported["size_bytes"]
    assert row.size_bytes == export_files.folder_bytes(Path(exported["path"]))
    assert Path(exported["path"]).parent == store.artifact_dir(row.id) and Path(exported["zip_path"]).is_file()
    assert row.details["size_in_memory_bytes"] != row.size_bytes
    with pytest.raises(ExportError, match="already exists"):  # a path that exists is refused before any work
        (tmp_path / "taken").mkdir()
        pipeline.run(Recipe(model="sample:teacher", export={"format": "hf", "path": str(tmp_path / "taken")}), store)
    assert len(store.list()) == 1


def test_cli_exports_a_recipe_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    from core.cli import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: sample:teacher\nevaluation: {max_windows: 2, seqlen: 64, latency: false}\n")
    out = tmp_path / "exported"
    common = ["--results-dir", str(tmp_path / "results"), "--check-windows", "2"]
    assert main(["export", str(recipe), "--format", "hf", "--out", str(out), "--json", *common]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["details"]["export"]["check_passed"] and (out / "model.safetensors").is_file()
    assert main(["export", str(recipe), "--format", "hf", "--out", str(out), *common]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", row["id"], "--format", "gguf", "--gguf-type", "Q4_0", "--out", str(tmp_path / "g"),
                 *common]) == 0
    assert "reload check" in capsys.readouterr().out and (tmp_path / "g" / "model-Q4_0.gguf").is_file()
