"""Loading models by reference: four architectures round-trip; every refusal says what to do."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

import core.models
import core.models.device
import core.models.loading
from core.data import load_text, tokenize, windows
from core.errors import (
    DeviceError,
    HubUnreachableError,
    InsufficientMemoryError,
    ModelFileError,
    ModelNotFoundError,
    NotACausalLMError,
    UnsafeModelError,
)
from core.evaluate import evaluate_quality
from core.models import clone, files, load, load_exported, pick_device, pick_dtype, resolve
from tests.helpers import (
    CAUSAL_FAMILIES,
    CONTEXT,
    bert_folder,
    corpus_text,
    distilbert_folder,
    pickle_only_folder,
    remote_code_folder,
)

PROBE = torch.arange(5, 21).reshape(1, 16)  # 16 token ids, all inside the tiny vocabularies


@torch.inference_mode()
def _logits(model: torch.nn.Module, ids: torch.Tensor = PROBE) -> torch.Tensor:
    return model(input_ids=ids).logits


# --- the four architectures --------------------------------------------------------------------


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_load_folder_on_cpu(tiny_models, family):
    loaded = load(str(tiny_models[family]), device="cpu")
    assert loaded.model.config.model_type == family
    assert not loaded.model.training
    assert loaded.device == torch.device("cpu")
    assert loaded.dtype == torch.float32
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer.pad_token is not None
    assert loaded.source.kind == "folder"
    assert loaded.source.default_text == "wikitext2"
    assert loaded.context_length == CONTEXT


def test_llama_uses_grouped_query_attention(tiny_models):
    config = load(str(tiny_models["llama"]), device="cpu").model.config
    assert config.num_key_value_heads < config.num_attention_heads


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_evaluates_to_a_finite_perplexity(tiny_models, family):
    loaded = load(str(tiny_models[family]), device="cpu")
    ids = tokenize(loaded.tokenizer, corpus_text(seed=1))
    metrics = evaluate_quality(loaded.model, windows(ids, 16, max_windows=2))
    assert (metrics.windows, metrics.seqlen, metrics.tokens_scored) == (2, 16, 30)
    assert math.isfinite(metrics.perplexity)
    assert metrics.perplexity > 1.0


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_clone_is_identical_then_independent(tiny_models, family):
    original = load(str(tiny_models[family]), device="cpu").model
    copy = clone(original)
    reference = _logits(original)
    assert torch.equal(_logits(copy), reference)

    first_original = next(original.parameters())
    kept = first_original.detach().clone()
    with torch.no_grad():
        next(copy.parameters()).add_(1.0)
    assert torch.equal(first_original, kept)
    assert torch.equal(_logits(original), reference)
    assert not torch.equal(_logits(copy), reference)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_clone_keeps_tied_embeddings_tied_to_each_other_only(tiny_models, family):
    original = load(str(tiny_models[family]), device="cpu").model
    copy = clone(original)
    tied = original.get_output_embeddings().weight is original.get_input_embeddings().weight
    assert tied == (family in ("gpt2", "opt"))
    assert (copy.get_output_embeddings().weight is copy.get_input_embeddings().weight) == tied
    assert copy.get_input_embeddings().weight is not original.get_input_embeddings().weight


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_two_loads_give_identical_outputs(tiny_models, family):
    first = load(str(tiny_models[family]), device="cpu").model
    second = load(str(tiny_models[family]), device="cpu").model
    assert torch.equal(_logits(first), _logits(second))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_save_pretrained_round_trip(tiny_models, family, tmp_path):
    loaded = load(str(tiny_models[family]), device="cpu")
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = load(str(tmp_path), device="cpu")
    assert torch.equal(_logits(again.model), _logits(loaded.model))
    text = "def value(self): return x"
    assert again.tokenizer(text)["input_ids"] == loaded.tokenizer(text)["input_ids"]


# --- refusals ----------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"neither a folder with config\.json"):
        load(str(tmp_path / "no-such-model"), device="cpu")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file"):
        load(str(tmp_path / "model.gguf"), device="cpu")


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        load(str(tmp_path), device="cpu")


def test_folder_without_weights(tiny_models, tmp_path):
    shutil.copy(tiny_models["gpt2"] / "config.json", tmp_path / "config.json")
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load(str(tmp_path), device="cpu")


def test_bert_is_not_a_causal_lm(tmp_path):
    folder = bert_folder(tmp_path / "bert")
    with pytest.raises(NotACausalLMError, match="'bert' model, which is not a causal"):
        load(str(folder), device="cpu")


def test_distilbert_is_not_a_causal_lm(tmp_path):
    folder = distilbert_folder(tmp_path / "distilbert")
    with pytest.raises(NotACausalLMError, match="'distilbert' model, which is not a causal"):
        load(str(folder), device="cpu")


def test_pickle_only_weights_are_refused_unless_allowed(tiny_models, tmp_path):
    folder = pickle_only_folder(tmp_path / "pickled", family="gpt2")
    with pytest.raises(UnsafeModelError, match="pickle") as info:
        load(str(folder), device="cpu")
    assert "allow_pickle" in str(info.value)
    loaded = load(str(folder), device="cpu", allow_pickle=True)
    # Same seed, same config as the safetensors gpt2 folder: the pickled weights were really read.
    reference = load(str(tiny_models["gpt2"]), device="cpu").model
    assert torch.equal(_logits(loaded.model), _logits(reference))


def test_remote_code_is_refused(tmp_path):
    folder = remote_code_folder(tmp_path / "custom")
    with pytest.raises(UnsafeModelError, match="its own Python code") as info:
        load(str(folder), device="cpu")
    assert "trust_remote_code" in str(info.value)


def test_hub_unreachable_fails_fast(monkeypatch):
    monkeypatch.setattr(core.models.loading, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(HubUnreachableError, match="cannot reach the Hugging Face Hub") as info:
        load("nobody/no-such-model", device="cpu")
    assert "nobody/no-such-model" in str(info.value)


def test_insufficient_memory_reports_gib(tiny_models, monkeypatch):
    monkeypatch.setattr(core.models.device, "free_memory_bytes", lambda device: 1000)
    with pytest.raises(InsufficientMemoryError, match="GiB") as info:
        load(str(tiny_models["llama"]), device="cpu")
    assert "dtype" in str(info.value)
    # The check can be turned off by the caller.
    assert load(str(tiny_models["llama"]), device="cpu", check_free_memory=False).model is not None


def test_unknown_sample_name():
    with pytest.raises(ModelNotFoundError, match="no bundled sample model 'sample:no-such-sample'"):
        load("sample:no-such-sample", device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA exists here, so asking for it is not an error")
def test_cuda_without_cuda(tiny_models):
    with pytest.raises(DeviceError, match="CUDA is not available"):
        load(str(tiny_models["gpt2"]), device="cuda")


@pytest.mark.parametrize(("requested", "phrase"), [("tpu", "unknown device"), ("meta", "not supported")])
def test_unsupported_devices(requested, phrase):
    with pytest.raises(DeviceError, match=phrase):
        pick_device(requested)


def test_bad_dtype(tiny_models):
    with pytest.raises(DeviceError, match="unknown dtype 'int8'") as info:
        load(str(tiny_models["gpt2"]), device="cpu", dtype="int8")
    assert "fp32" in str(info.value)


# --- device, dtype and references --------------------------------------------------------------


@pytest.mark.parametrize("requested", [None, "", "auto"])
def test_pick_dtype_defaults_to_fp32_on_cpu(requested):
    assert pick_dtype(torch.device("cpu"), requested) == torch.float32


@pytest.mark.parametrize(("name", "dtype"), [("fp32", torch.float32), ("fp16", torch.float16),
                                             ("bf16", torch.bfloat16)])
def test_pick_dtype_by_name(name, dtype):
    assert pick_dtype(torch.device("cpu"), name) == dtype


def test_pick_device_cpu():
    assert pick_device("cpu") == torch.device("cpu")


def test_load_in_bf16(tiny_models):
    loaded = load(str(tiny_models["llama"]), device="cpu", dtype="bf16")
    assert loaded.dtype == torch.bfloat16
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_resolve_classifies_references():
    hub = resolve("org/name")
    assert (hub.kind, hub.location, hub.default_text) == ("hub", "org/name", "wikitext2")
    with pytest.raises(ModelNotFoundError):
        resolve("a/b/c")


# --- bundled sample models (present once built) ------------------------------------------------


@pytest.mark.parametrize("name", ["teacher", "student"])
def test_sample_model_loads_and_predicts_its_text(name):
    if name not in core.models.sample_names():
        pytest.skip(f"sample model {name!r} is not built (sample_models/{name} has no config.json)")
    loaded = load(f"sample:{name}", device="cpu")
    assert loaded.source.kind == "sample"
    assert loaded.source.default_text == "sample"
    assert loaded.tokenizer.pad_token is not None
    seqlen = min(loaded.context_length, 256)
    ids = tokenize(loaded.tokenizer, load_text("sample").text)
    metrics = evaluate_quality(loaded.model, windows(ids, seqlen, max_windows=4))
    assert metrics.windows == 4
    assert metrics.perplexity < len(loaded.tokenizer) / 10


@pytest.mark.skipif(not core.models.sample_names(), reason="no sample models are built yet")
def test_sample_aliases_resolve_to_the_same_folder():
    for alias, name in core.models.SAMPLE_ALIASES.items():
        if name in core.models.sample_names():
            assert resolve(f"sample:{alias}").location == resolve(f"sample:{name}").location


def test_resolve_local_folder(tiny_models):
    source = resolve(str(tiny_models["opt"]))
    assert source.kind == "folder"
    assert Path(source.location) == tiny_models["opt"].resolve()


# ---- damaged files are named before a library parses them ------------------------------------------


def _gguf(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_check_gguf_passes_a_whole_file_and_names_every_kind_of_damage(tmp_path):
    path = _gguf(tmp_path / "m.gguf")
    files.check_gguf(path)  # whole: no complaint
    data = path.read_bytes()
    for content, phrase in [(b"", "is empty"), (b"PK\x03\x04" + data[4:], "not a GGUF file"),
                            (data[: len(data) - 64], "damaged or truncated"), (data[:40], "damaged or truncated")]:
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match=phrase) as info:
            files.check_gguf(path)
        assert str(path) in str(info.value)


def test_check_folder_names_the_damaged_file(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["gpt2"], tmp_path / "gpt2")
    files.check_folder(folder)  # a folder save_pretrained wrote passes
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelFileError, match=f"{weights.name} is not a complete safetensors file"):
        files.check_folder(folder)


def test_check_loading_info_refuses_missing_and_misshapen_tensors():
    files.check_loading_info({"missing_keys": set(), "mismatched_keys": []}, "m")
    with pytest.raises(ModelFileError, match=r"lack 2 tensor\(s\).*a.weight, b.weight"):
        files.check_loading_info({"missing_keys": {"b.weight", "a.weight"}}, "m")
    with pytest.raises(ModelFileError, match=r"e.weight is \[4, 2\] in the weights but \[8, 2\] by the config"):
        files.check_loading_info({"mismatched_keys": [("e.weight", torch.Size([4, 2]), torch.Size([8, 2]))]}, "m")


def test_a_folder_with_the_weights_of_another_model_is_refused(tiny_models, tmp_path):
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "llama")
    shutil.copy(next(tiny_models["gpt2"].glob("*.safetensors")), folder / "model.safetensors")
    with pytest.raises(ModelFileError, match="the weights lack"):
        load(str(folder), device="cpu")


def test_a_config_value_of_the_wrong_type_names_config_json(tiny_models, tmp_path):
    import json

    folder = shutil.copytree(tiny_models["llama"], tmp_path / "llama")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_attention_heads": "four"}))
    with pytest.raises(ModelFileError, match="config.json"):
        load(str(folder), device="cpu")


def _stored_form(tiny_models, tmp_path: Path, modules: dict) -> Path:
    """The tiny llama in SqueezeLab's stored form with no layer quantized (the weights as they are)."""
    import json

    folder = shutil.copytree(tiny_models["llama"], tmp_path / "stored")
    (folder / "model.safetensors").rename(folder / "squeezelab.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "squeezelab", "format_version": 1, "modules": modules}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_our_stored_form_reloads_and_its_damage_is_named(tiny_models, tmp_path):
    folder = _stored_form(tiny_models, tmp_path, {})
    assert torch.equal(_logits(load(str(folder), device="cpu").model), _logits(load(str(tiny_models["llama"])).model))
    weights = folder / "squeezelab.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="squeezelab.safetensors"):
        load_exported(folder)


def test_our_stored_form_naming_a_layer_the_model_lacks_is_refused(tiny_models, tmp_path):
    folder = _stored_form(tiny_models, tmp_path, {"model.layers.9.mlp.up_proj": {"bits": 4}})
    with pytest.raises(ModelFileError, match="does not fit the model"):
        load(str(folder), device="cpu")
