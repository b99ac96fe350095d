"""Recipes with prune steps, end to end through the pipeline and the CLI, on tiny models."""

from __future__ import annotations

import json

import pytest
import torch

from core import cli, models
from core.calibration import CalibrationSpec
from core.evaluate import EvalSpec
from core.recipe import Recipe, Step, pipeline
from core.store import ResultStore


def _recipe(model_dir, text_file, *steps: dict) -> Recipe:
    return Recipe(
        model=str(model_dir),
        steps=tuple(Step("prune", params) for params in steps),
        calibration=CalibrationSpec(text=str(text_file), samples=4, seqlen=32),
        evaluation=EvalSpec(text=str(text_file), seqlen=32, max_windows=3, latency=False),
        device="cpu",
    )


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_unstructured_prune_step_zeroes_half_of_the_block_weights(tiny_models, text_file, tmp_path, method):
    store = ResultStore(tmp_path / "results")
    base = models.load(str(tiny_models["llama"]), device="cpu")
    before = {name: p.clone() for name, p in base.model.named_parameters()}
    row = pipeline.run(_recipe(tiny_models["llama"], text_file, {"method": method, "sparsity": 0.5}), store, base=base)
    assert row.status == "ok"
    report = row.details["steps"][0]
    assert report["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(layer["sparsity"] == pytest.approx(0.5, abs=0.02) for layer in report["layers"])
    assert row.nonzero_params < row.params
    assert "with zeros" in row.kernel
    # Stored densely, so no smaller: the row must not pretend otherwise.
    assert row.size_bytes == sum(p.numel() * 4 for p in base.model.parameters())
    assert row.base_perplexity != row.perplexity and row.top1_agreement is not None and row.kl_to_base > 0
    for name, parameter in base.model.named_parameters():
        assert torch.equal(parameter, before[name]), f"the base model's {name} was modified"


def test_base_perplexity_of_a_step_run_equals_an_evaluation_only_run(tiny_models, text_file, tmp_path):
    store = ResultStore(tmp_path / "results")
    only_eval = pipeline.run(_recipe(tiny_models["llama"], text_file), store)
    pruned = pipeline.run(_recipe(tiny_models["llama"], text_file, {"method": "magnitude", "sparsity": 0.3}), store)
    assert pruned.base_perplexity == pytest.approx(only_eval.perplexity, rel=1e-9)


def test_structured_step_really_shrinks_the_model(tiny_models, text_file, tmp_path):
    store = ResultStore(tmp_path / "results")
    dense = pipeline.run(_recipe(tiny_models["gpt2"], text_file), store)
    row = pipeline.run(_recipe(tiny_models["gpt2"], text_file,
                               {"method": "structured", "target": "mlp_channels", "fraction": 0.5}), store)
    assert row.params < dense.params and row.size_bytes < dense.size_bytes
    assert row.details["steps"][0]["config_changes"]


def test_recovery_fine_tune_keeps_zeros_and_records_losses(tiny_models, text_file, tmp_path):
    store = ResultStore(tmp_path / "results")
    row = pipeline.run(_recipe(tiny_models["llama"], text_file,
                               {"method": "magnitude", "sparsity": 0.5, "recovery_steps": 3}), store)
    report = row.details["steps"][0]
    assert len(report["recovery_losses"]) == 3
    assert report["label"].endswith("+3 ft")
    assert row.nonzero_params < row.params


def test_a_cancelled_recovery_fine_tune_keeps_the_steps_done_and_is_evaluated(tiny_models, text_file, tmp_path):
    tuned: list[float] = []  # fine-tune progress reports: one per step done

    def on_progress(stage: str, fraction: float) -> None:
        if stage == "fine-tune":
            tuned.append(fraction)

    store = ResultStore(tmp_path / "results")
    recipe = _recipe(tiny_models["llama"], text_file, {"method": "magnitude", "sparsity": 0.5, "recovery_steps": 20},
                     {"method": "magnitude", "sparsity": 0.7})
    row = pipeline.run(recipe, store, on_progress=on_progress, cancel=lambda: len(tuned) >= 3)
    assert row.status == "cancelled" and row.perplexity is not None and store.get(row.id).status == "cancelled"
    (report,) = row.details["steps"]  # the second prune step did not run
    assert len(report["recovery_losses"]) == 3 and report["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert row.nonzero_params < row.params
    notes = " ".join(row.details["notes"])
    assert "recovery fine-tune cancelled after 3 of 20 steps" in notes and "not run: magnitude 70%" in notes


def test_cli_prune_prints_the_row_and_stores_it(tiny_models, text_file, tmp_path, capsys):
    code = cli.main(["prune", "--model", str(tiny_models["llama"]), "--method", "wanda", "--sparsity", "0.5",
                     "--pattern", "2:4", "--calib-text", str(text_file), "--calib-samples", "4", "--calib-seqlen",
                     "32", "--text", str(text_file), "--seqlen", "32", "--max-windows", "2", "--no-latency",
                     "--json", "--results-dir", str(tmp_path)])
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert row["details"]["method"] == "wanda 50% 2:4"
    assert ResultStore(tmp_path).get(row["id"]).status == "ok"


def test_cli_prune_bad_sparsity_exits_2_without_a_row(tiny_models, tmp_path, capsys):
    code = cli.main(["prune", "--model", str(tiny_models["llama"]), "--method", "wanda", "--sparsity", "1.5",
                     "--results-dir", str(tmp_path)])
    assert code == 2
    assert "sparsity" in capsys.readouterr().err
    assert ResultStore(tmp_path).list() == []
