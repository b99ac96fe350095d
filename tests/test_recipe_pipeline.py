"""pipeline.run end to end on a tiny llama: one result row per run, whatever way the run ends."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from core import models
from core.errors import CancelledError, ModelNotFoundError, TextSourceError
from core.evaluate import EvalSpec
from core.evaluate import measurement as evaluation
from core.recipe import Recipe, pipeline
from core.store import ResultStore


def _spec(text: Path, **overrides) -> EvalSpec:
    settings = {"text": str(text), "seqlen": 16, "max_windows": 3, "latency_runs": 1, "new_tokens": 4,
                "prompt_tokens": 8}
    return EvalSpec(**{**settings, **overrides})


def _recipe(model: str, text: Path, **overrides) -> Recipe:
    return Recipe(model=model, evaluation=_spec(text, **overrides), device="cpu")


def test_text_file_is_a_few_kb(text_file):
    assert 2_000 < text_file.stat().st_size < 20_000


def test_run_records_an_ok_row(llama, text_file, tmp_path):
    store = ResultStore(tmp_path)
    progress: list[tuple[str, float]] = []
    row = pipeline.run(_recipe(llama, text_file), store, on_progress=lambda stage, f: progress.append((stage, f)))

    assert row.status == "ok" and row.error is None
    assert row.model == llama
    assert math.isfinite(row.perplexity) and row.perplexity > 1
    assert row.base_perplexity == row.perplexity  # no steps: the model is its own base
    assert 0.0 <= row.top1_acc <= 1.0
    assert row.params > 0 and row.size_bytes > 0
    assert row.nonzero_params <= row.params
    assert row.bits_per_weight == 32.0
    assert "dense float32" in row.kernel
    assert row.device == "cpu"
    assert row.wall_s > 0
    assert row.prefill_ms > 0 and row.decode_tok_s > 0 and row.peak_mem_bytes > 0
    assert row.details["seqlen"] == 16
    assert row.details["windows"] == 3
    assert row.details["tokens_scored"] == 3 * 15
    assert row.details["text"] == str(text_file)
    assert row.details["dtype"] == "float32"
    assert row.details["latency"]["new_tokens"] == 4
    assert row.details["latency"]["runs"] == 1
    assert Recipe(model=llama, evaluation=_spec(text_file), device="cpu").to_yaml() == row.recipe

    stored = store.list()
    assert [r.id for r in stored] == [row.id]
    assert stored[0].status == "ok"
    assert stored[0].perplexity == pytest.approx(row.perplexity)

    stages = {stage for stage, _ in progress}
    assert {"load", "evaluate", "latency"} <= stages
    assert ("evaluate", 1.0) in progress


def test_run_without_latency_leaves_speed_empty(llama, text_file, tmp_path):
    row = pipeline.run(_recipe(llama, text_file, latency=False, max_windows=1), ResultStore(tmp_path))
    assert row.status == "ok"
    assert row.prefill_ms is None and row.decode_tok_s is None and row.peak_mem_bytes is None
    assert row.details["latency"] is None
    assert row.details["windows"] == 1


def test_base_model_is_used_and_not_mutated(llama, text_file, tmp_path):
    base = models.load(llama, device="cpu")
    name, parameter = next(iter(base.model.named_parameters()))
    before = {n: p.detach().clone() for n, p in base.model.state_dict().items()}
    training = base.model.training

    row = pipeline.run(_recipe(llama, text_file, latency=False), ResultStore(tmp_path), base=base)

    assert row.status == "ok"
    assert torch.equal(dict(base.model.named_parameters())[name], before[name])
    after = base.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert base.model.training == training
    assert parameter.requires_grad  # still a trainable parameter, not frozen or replaced


def test_same_inputs_give_the_same_perplexity(llama, text_file, tmp_path):
    base = models.load(llama, device="cpu")
    store = ResultStore(tmp_path)
    first = pipeline.run(_recipe(llama, text_file, latency=False), store, base=base)
    second = pipeline.run(_recipe(llama, text_file, latency=False), store)
    assert first.perplexity == pytest.approx(second.perplexity, rel=1e-6)
    assert {r.id for r in store.list()} == {first.id, second.id}


def test_missing_model_raises_and_writes_no_row(text_file, tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(ModelNotFoundError):
        pipeline.run(_recipe(str(tmp_path / "no-such-model"), text_file), store)
    assert store.list() == []


def test_failure_after_start_leaves_one_failed_row(llama, text_file, tmp_path, monkeypatch):
    def fails(*_args, **_kwargs):
        raise TextSourceError("the text has 3 tokens but one window needs at least 16")

    monkeypatch.setattr(pipeline, "measure", fails)  # a failure the checks before the run cannot see
    store = ResultStore(tmp_path / "results")
    with pytest.raises(TextSourceError):
        pipeline.run(_recipe(llama, text_file), store)
    rows = store.list()
    assert len(rows) == 1
    assert rows[0].status == "failed"
    assert "TextSourceError" in rows[0].error
    assert "window" in rows[0].error
    assert rows[0].perplexity is None


def test_a_text_too_short_for_one_window_is_refused_before_any_row(llama, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("def x", encoding="utf-8")
    store = ResultStore(tmp_path / "results")
    with pytest.raises(TextSourceError, match=r"short.txt' has \d+ tokens but one window needs at least 16"):
        pipeline.run(_recipe(llama, short), store)
    assert store.list() == []


def test_missing_text_file_is_refused_before_any_row(llama, tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(TextSourceError, match="neither a known name"):
        pipeline.run(_recipe(llama, tmp_path / "missing.txt"), store)
    assert store.list() == []


def test_cancel_gives_a_cancelled_row_and_reraises(llama, text_file, tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(CancelledError, match="cancelled"):
        pipeline.run(_recipe(llama, text_file), store, cancel=lambda: True)
    rows = store.list()
    assert len(rows) == 1
    assert rows[0].status == "cancelled"
    assert rows[0].error.startswith("CancelledError:")
    assert rows[0].perplexity is None


def test_cancel_returning_false_runs_to_the_end(llama, text_file, tmp_path):
    calls: list[int] = []

    def never() -> bool:
        calls.append(1)
        return False

    row = pipeline.run(_recipe(llama, text_file, latency=False), ResultStore(tmp_path), cancel=never)
    assert row.status == "ok"
    assert len(calls) >= 1


def test_fit_to_context():
    assert evaluation.fit_to_context(128, 32, 512) == (128, 32)
    prompt, new = evaluation.fit_to_context(128, 32, 100)
    assert prompt + new <= 100 and prompt >= 1 and new >= 1
    prompt, new = evaluation.fit_to_context(1, 1, 2)
    assert (prompt, new) == (1, 1)
