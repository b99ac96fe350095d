"""Shared fixtures: tiny model folders built once per session, and single-threaded torch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CAUSAL_FAMILIES, corpus_text, tiny_causal_lm, tiny_model_folder, tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny causal LM folder per family (gpt2, opt, gpt_neox, llama), built once."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: tiny_model_folder(family, root / family) for family in CAUSAL_FAMILIES}


@pytest.fixture(autouse=True)
def single_thread_torch():
    """One intra-op thread: reproducible float sums, and no contention with other work on the machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few KB of code-like text, long enough for a handful of short windows."""
    path = tmp_path_factory.mktemp("text") / "eval.txt"
    path.write_text(corpus_text(n_words=800, seed=7), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def llama(tiny_models) -> str:
    """The tiny Llama-family model folder, as a model reference string."""
    return str(tiny_models["llama"])


@pytest.fixture(scope="session")
def tiny() -> dict[str, torch.nn.Module]:
    """One tiny random model per family, in memory, shared read-only (tests compress copies)."""
    tokenizer = tiny_tokenizer()
    return {family: tiny_causal_lm(family, tokenizer) for family in CAUSAL_FAMILIES}


@pytest.fixture
def results_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every store a test opens (with or without --results-dir) under tmp_path (modules opt in)."""
    results = tmp_path / "results"
    monkeypatch.setenv("SQUEEZELAB_RESULTS_DIR", str(results))
    return results
