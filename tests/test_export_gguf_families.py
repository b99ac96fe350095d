"""GGUF files of every family llama.cpp runs: tensor names, norms and metadata as llama.cpp's converter writes them,
read back with the gguf reader; the re-evaluation within 0.5% is in tests/test_families.py's matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SpecError
from core.export import ExportSpec, export_model
from core.quantize import QuantizeSpec, quantize_
from tests.helpers import family_tokenizer, tiny_causal_lm


def _written(family: str, tmp_path, **overrides):
    import gguf

    tokenizer = family_tokenizer(family)
    model = tiny_causal_lm(family, tokenizer, **overrides)
    with torch.no_grad():  # norms away from their init, so that a missing or doubled +1 shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.add_(0.1 * torch.randn_like(param))
    quantize_(model, QuantizeSpec("rtn", bits=4, group_size=32))
    ids = tokenizer("def f(x):\n    return x + 1\n" * 8, return_tensors="pt")["input_ids"][0]
    result = export_model(model, tokenizer, ExportSpec(format="gguf", check_windows=0), ids[:64].view(2, 32),
                          out=tmp_path / "out")
    reader = gguf.GGUFReader(str(tmp_path / "out" / result.gguf_file))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    return model, result, reader, tensors


def _field(reader, key):
    field = reader.fields[key]
    value = field.parts[field.data[0]]
    return bytes(value).decode() if field.types and field.types[0].name == "STRING" else value.tolist()[0]


@pytest.mark.parametrize("family,arch", [("gemma2", "gemma2"), ("gemma3", "gemma3")])
def test_gemma_norms_are_stored_as_1_plus_w_with_its_metadata(family, arch, tmp_path):
    model, result, reader, tensors = _written(family, tmp_path)
    assert result.check_passed and _field(reader, "general.architecture") == arch
    layer = model.model.layers[0]
    for gguf_name, norm in (("blk.0.attn_norm.weight", layer.input_layernorm),
                            ("blk.0.post_attention_norm.weight", layer.post_attention_layernorm),
                            ("blk.0.ffn_norm.weight", layer.pre_feedforward_layernorm),
                            ("blk.0.post_ffw_norm.weight", layer.post_feedforward_layernorm),
                            ("output_norm.weight", model.model.norm)):
        np.testing.assert_allclose(np.asarray(tensors[gguf_name].data), 1 + norm.weight.detach().numpy(), rtol=1e-6)
    assert _field(reader, f"{arch}.attention.key_length") == 256
    assert _field(reader, f"{arch}.attention.sliding_window") == 16
    assert "output.weight" not in tensors  # tied: llama.cpp reads token_embd for both
    if family == "gemma2":
        assert _field(reader, "gemma2.attn_logit_softcapping") == pytest.approx(50.0)
        assert _field(reader, "gemma2.final_logit_softcapping") == pytest.approx(30.0)
    else:
        assert "blk.0.attn_q_norm.weight" in tensors
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True  # Gemma's tokenizer puts <bos> first


def test_qwen_and_phi3_tensors_are_named_as_llama_cpp_names_them(tmp_path):
    _, result, reader, tensors = _written("qwen2", tmp_path / "qwen2")
    assert result.check_passed and _field(reader, "general.architecture") == "qwen2"
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(tensors)
    _, result, reader, tensors = _written("qwen3", tmp_path / "qwen3")
    assert result.check_passed and {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= set(tensors)
    model, result, reader, tensors = _written("phi3", tmp_path / "phi3")
    assert result.check_passed and _field(reader, "general.architecture") == "phi3"
    assert "blk.0.attn_qkv.weight" in tensors and "blk.0.ffn_up.weight" in tensors
    assert "blk.0.ffn_gate.weight" not in tensors  # gate and up stay one [gate; up] matrix, as llama.cpp reads it
    assert list(tensors["blk.0.ffn_up.weight"].shape)[-1] == 2 * model.config.intermediate_size


def test_a_family_llama_cpp_does_not_take_is_refused_with_the_reason(tmp_path):
    with pytest.raises(SpecError, match="llama.cpp has no OPT architecture"):
        _written("opt", tmp_path)
    sliding = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    with pytest.raises(SpecError, match="not its family's default pattern"):
        _written("gemma3", tmp_path, num_hidden_layers=4, layer_types=sliding)
