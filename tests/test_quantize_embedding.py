"""A quantized tied embedding keeps each family's embedding semantics (Gemma scales its rows by sqrt(hidden))."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from core.evaluate import evaluate_quality
from core.export import ExportSpec, export_model, load_exported
from core.quantize import QuantizeSpec, TiedQuantEmbedding, quantize_
from core.quantize.qembedding import embedding_scale
from tests.helpers import HIDDEN, family_tokenizer, tiny_causal_lm, trained_tiny_lm


def _windows(tokenizer, n: int = 4, seqlen: int = 32) -> torch.Tensor:
    from tests.helpers import corpus_text

    ids = tokenizer(corpus_text(600, seed=3), return_tensors="pt")["input_ids"][0]
    return ids[: n * seqlen].view(n, seqlen)


def _head_only(bits: int = 8) -> QuantizeSpec:
    """Only the tied lm_head (and so the embedding) quantized: no block layer matches ``include``."""
    return QuantizeSpec(method="rtn", bits=bits, group_size=16, lm_head=True, include=("*.no_such_layer",))


@pytest.mark.parametrize("family", ["gemma3", "gemma2"])
def test_gemmas_tied_embedding_at_8_bits_keeps_the_perplexity(family):
    tokenizer = family_tokenizer(family)
    model = trained_tiny_lm(family, tokenizer)
    assert model.config.tie_word_embeddings and embedding_scale(model.get_input_embeddings()) == math.sqrt(HIDDEN)
    windows = _windows(tokenizer)
    before = evaluate_quality(model, windows).perplexity
    quantized = copy.deepcopy(model)
    report = quantize_(quantized, _head_only())
    embedding = quantized.get_input_embeddings()
    assert isinstance(embedding, TiedQuantEmbedding) and embedding.embed_scale == pytest.approx(math.sqrt(HIDDEN))
    assert any("tied to lm_head" in note for note in report.notes)
    after = evaluate_quality(quantized, windows).perplexity
    assert before < 20 and abs(after / before - 1) < 0.01  # trained: well below the 300-token vocabulary
    # the same rows without the scale (what a plain tied embedding would hand out) break the model
    embedding.embed_scale = 1.0
    assert evaluate_quality(quantized, windows).perplexity > 1.3 * before


def test_a_plain_tied_embedding_has_no_scale():
    tokenizer = family_tokenizer("llama")
    model = tiny_causal_lm("llama", tokenizer, tie_word_embeddings=True)
    quantize_(model, _head_only())
    assert model.get_input_embeddings().embed_scale == 1.0


@pytest.mark.parametrize("fmt", ["hf", "compressed-tensors"])
def test_a_gemma3_with_its_tied_embedding_quantized_exports_and_reloads(tmp_path, fmt):
    tokenizer = family_tokenizer("gemma3")
    model = tiny_causal_lm("gemma3", tokenizer)
    quantize_(model, QuantizeSpec(method="rtn", bits=8, group_size=16, lm_head=True))
    windows = _windows(tokenizer)
    result = export_model(model, tokenizer, ExportSpec(format=fmt, check_windows=0), windows, out=tmp_path / "out")
    assert result.check_passed
    reloaded = load_exported(str(tmp_path / "out"))
    expected = evaluate_quality(model, windows).perplexity
    assert evaluate_quality(reloaded.model, windows).perplexity == pytest.approx(expected, rel=5e-3)
