"""The planner (core.plan.planner, sizes, menu) and budget steps: exact sizes against real artifacts, plans
within their budgets, planned recipes that rerun to the same weights, and every bad budget refused."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import torch
import yaml

from core.errors import SpecError
from core.evaluate.size import measure_size
from core.export.export import export_model
from core.export.spec import ExportSpec
from core.layers import block_linear_layers, weight_matrix
from core.models.loading import clone, load
from core.models.sparse import worth_sparse
from core.plan import menu as menu_module
from core.plan.atlas import Atlas
from core.plan.build import build_atlas
from core.plan.menu import Budget, Option, parse_budget, prune_menu, quantize_menu
from core.plan.planner import Planner, step_params
from core.plan.sizes import LayerShape, fixed_bytes, kept_weights, pruned_bytes, quantized_bytes
from core.prune.apply import prune_
from core.prune.spec import PruneSpec
from core.quantize.apply import quantize_
from core.quantize.scheme import BITS_RANGE
from core.quantize.spec import QuantizeSpec
from core.recipe import budget as budget_module
from core.recipe.budget import resolve_budgets
from core.recipe.pipeline import apply_steps, step_context
from core.recipe.recipe import Recipe
from core.store import ResultStore
from tests.helpers import tiny_tokenizer

MENU = quantize_menu("rtn", (2, 3, 4), (16,))


def ids(samples: int, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, len(tiny_tokenizer()), (samples, seqlen), generator=torch.Generator().manual_seed(seed))


def safetensors_data_bytes(path: Path) -> int:
    """Bytes of a .safetensors file past its header: the tensors' data."""
    with open(path, "rb") as handle:
        header = struct.unpack("<Q", handle.read(8))[0]
    return path.stat().st_size - 8 - header


def export_hf(model: torch.nn.Module, folder: Path, dtype: str = "fp32") -> Path:
    """The export's weights file; the size model counts floats in the model's dtype (fp32 here), which a
    quantized model's default export narrows to fp16."""
    export_model(model, tiny_tokenizer(), ExportSpec(format="hf", check_windows=1, dtype=dtype), ids(1), out=folder)
    return folder / "squeezelab.safetensors"


@pytest.fixture(scope="module")
def atlas(tiny) -> Atlas:
    return build_atlas(copy.deepcopy(tiny["llama"]), "tiny", MENU, ids(6), ids(1, seed=1), True)


def test_the_quantized_size_model_matches_the_bytes_in_memory_and_in_the_artifact(tiny, tmp_path):
    model = copy.deepcopy(tiny["llama"])
    overrides = [{"pattern": "*.q_proj", "bits": 2, "group_size": 32}, {"pattern": "*.down_proj", "bits": 3,
                 "group_size": 0}, {"pattern": "*.k_proj", "bits": 8, "group_size": 0},
                 {"pattern": "*.layers.1.mlp.up_proj", "bits": 5, "group_size": 16, "symmetric": False}]
    spec = QuantizeSpec(method="rtn", bits=4, group_size=16, kernel="dequant", overrides=tuple(overrides))
    layers = block_linear_layers(model)
    expected = fixed_bytes(model, [name for name, _ in layers])
    for name, layer in layers:
        scheme = spec.scheme_for(name)
        rows, cols = weight_matrix(layer).shape
        expected += quantized_bytes(rows, cols, Option(scheme.bits, scheme.group_size, scheme.symmetric))
    quantize_(model, spec)
    assert measure_size(model).size_bytes == expected
    assert safetensors_data_bytes(export_hf(model, tmp_path / "q")) == expected
    narrowed = safetensors_data_bytes(export_hf(model, tmp_path / "default", "auto"))  # fp32 tensors in 16 bits
    float32_elements = sum(t.numel() for t in model.state_dict().values() if t.dtype == torch.float32)
    assert expected - narrowed == 2 * float32_elements > 0


def test_the_pruned_size_model_matches_the_sparse_artifact(tiny, tmp_path):
    model = copy.deepcopy(tiny["llama"])
    spec = PruneSpec.from_dict({"method": "wanda", "sparsity": 0.5, "overrides": [
        {"pattern": "*.mlp.*", "sparsity": 0.75}, {"pattern": "*.o_proj", "sparsity": 0.0},
        {"pattern": "*.k_proj", "sparsity": 0.02}]})
    layers = block_linear_layers(model)
    expected = fixed_bytes(model, [name for name, _ in layers])
    for name, layer in layers:
        rows, cols = weight_matrix(layer).shape
        expected += pruned_bytes(rows, cols, kept_weights(rows, cols, spec.sparsity_for(name), "wanda"), 4)
    prune_(model, spec, ids(4))
    assert not worth_sparse(weight_matrix(model.model.layers[0].self_attn.k_proj))  # 2%: stored dense
    assert safetensors_data_bytes(export_hf(model, tmp_path / "p")) == expected


def test_a_plan_keeps_its_budget_and_its_predicted_size_is_exact(tiny, atlas):
    planner = Planner(atlas, "measured")
    previous = None
    for avg in (3.0, 3.3, 3.7, 4.2, 4.6, 5.5):  # g16 scales cost 1 bit: 2-bit takes 3
        plan = planner.plan(Budget("avg_bits", avg))
        assert plan.avg_bits <= avg and plan.exact
        assert previous is None or plan.cost <= previous.cost  # a larger budget never costs more
        previous = plan
        model = copy.deepcopy(tiny["llama"])
        params = step_params(plan, "quantize", {"method": "rtn", "kernel": "dequant"}, atlas.key, "measured")
        quantize_(model, QuantizeSpec.from_dict(params))
        assert measure_size(model).size_bytes == plan.size_bytes
    size = planner.plan(Budget("size_mb", plan.size_bytes / 1e6 - 1e-6))
    assert size.size_bytes < plan.size_bytes


def test_a_sparsity_plan_reaches_its_sparsity(tiny):
    atlas = build_atlas(copy.deepcopy(tiny["llama"]), "tiny", prune_menu("wanda", (0.0, 0.5, 0.75)), ids(4),
                        ids(1, seed=1), False)
    plan = Planner(atlas).plan(Budget("sparsity", 0.6))
    assert plan.sparsity >= 0.6 and {o.sparsity for o in plan.options} <= {0.0, 0.5, 0.75}
    model = copy.deepcopy(tiny["llama"])
    report = prune_(model, PruneSpec.from_dict(step_params(plan, "prune", {"method": "wanda"}, atlas.key, "proxy")),
                    ids(4))
    assert report.sparsity == pytest.approx(plan.sparsity, abs=1e-9)


def test_max_ppl_plans_the_smallest_model_within_it(atlas):
    planner = Planner(atlas, "measured")
    best, worst = planner.plan(Budget("avg_bits", 8)).perplexity, planner.plan(Budget("avg_bits", 3)).perplexity
    loose = planner.plan(Budget("max_ppl", worst))
    tight = planner.plan(Budget("max_ppl", best * 1.000001))
    assert loose.perplexity <= worst and tight.perplexity <= best * 1.000001
    assert loose.size_bytes < tight.size_bytes
    assert planner.plan(Budget("avg_bits", loose.avg_bits)).cost == pytest.approx(loose.cost)
    with pytest.raises(SpecError, match="below what this menu can reach"):
        planner.plan(Budget("max_ppl", best * 0.99999 if best * 0.99999 > atlas.base_perplexity else best))


@pytest.mark.parametrize(("budget", "message"), [
    (Budget("avg_bits", 1.0), "below the smallest option: the smallest plan this menu allows takes 3.000 bits"),
    (Budget("size_mb", 0.01), "below the smallest option"),
])
def test_budgets_below_the_smallest_option_are_refused(atlas, budget, message):
    with pytest.raises(SpecError, match=message):
        Planner(atlas).plan(budget)


def test_an_unreachable_perplexity_is_refused(atlas):
    with pytest.raises(SpecError, match="impossible: the base model's perplexity"):
        Planner(atlas).plan(Budget("max_ppl", atlas.base_perplexity * 0.5))


@pytest.mark.parametrize(("raw", "message"), [
    ({"avg_bits": -3}, "impossible: it must be above 0"),
    ({"avg_bits": 0}, "impossible"),
    ({"avg_bits": 3, "size_mb": 2}, "exactly one of"),
    ({"bits": [3, 4]}, "exactly one of avg_bits, size_mb, max_ppl, got none"),
    ({"sparsity": 0.5}, "unknown budget key"),
    ({"avg_bits": 3, "bits": [1, 4]}, "from 2 to 8"),
    ({"avg_bits": 3, "mode": "exact"}, "proxy or measured"),
    ({"avg_bits": "many"}, "must be a number"),
])
def test_bad_quantize_budgets_are_refused(raw, message):
    with pytest.raises(SpecError, match=message):
        QuantizeSpec.from_dict({"method": "gptq", "budget": raw})


def test_bad_prune_budgets_are_refused():
    with pytest.raises(SpecError, match=r"a sparsity is a share in \[0, 1\)"):
        PruneSpec.from_dict({"method": "wanda", "budget": {"sparsity": 1.2}})
    with pytest.raises(SpecError, match="without sparsity"):
        PruneSpec.from_dict({"method": "wanda", "sparsity": 0.5, "budget": {"sparsity": 0.5}})
    with pytest.raises(SpecError, match="plans methods rtn, gptq, awq"):
        QuantizeSpec.from_dict({"method": "int8_dynamic", "budget": {"avg_bits": 8}})
    with pytest.raises(SpecError, match="lm_head: true would round the output projection outside the plan"):
        QuantizeSpec.from_dict({"method": "rtn", "lm_head": True, "budget": {"avg_bits": 4}})


def test_budget_mappings_read_back_to_the_same_menu():
    budget, menu = parse_budget({"avg_bits": 3.5, "bits": [4, 3], "group_sizes": [64, 0]}, "quantize", "awq")
    assert menu.labels == ["w3 g64", "w3 ch", "w4 g64", "w4 ch"] and budget.label() == "<= 3.5 bits/weight"
    again = parse_budget(menu_module.budget_mapping(budget, menu), "quantize", "awq")
    assert again == (budget, menu)
    assert menu_module.BITS_RANGE == BITS_RANGE


@pytest.fixture
def loaded(llama):
    return load(llama)


def budget_recipe(llama: str, text_file: Path, step: dict) -> Recipe:
    return Recipe.from_dict({"model": llama, "steps": [step],
                             "calibration": {"text": str(text_file), "samples": 4, "seqlen": 32},
                             "evaluation": {"text": str(text_file), "seqlen": 32, "max_windows": 2, "latency": False}})


def test_a_planned_recipe_reruns_to_the_same_model_without_planning(llama, text_file, loaded, tmp_path, monkeypatch):
    recipe = budget_recipe(llama, text_file, {"quantize": {"method": "gptq", "budget": {
        "avg_bits": 4.0, "bits": [2, 4], "group_sizes": [16], "mode": "measured", "heldout": 1}}})
    planned = resolve_budgets(recipe, loaded, step_context(recipe, loaded, None, None), tmp_path)
    params = planned.steps[0].params
    assert "budget" not in params and params["planned"]["predicted"]["avg_bits"] <= 4.0 and params["overrides"]
    monkeypatch.setattr(budget_module, "atlas_for", lambda *a, **k: pytest.fail("a planned recipe planned again"))
    rerun = Recipe.from_dict(yaml.safe_load(planned.to_yaml()))
    weights = []
    for each in (planned, rerun):
        model, _ = apply_steps(each, clone(loaded.model), step_context(each, loaded, None, None))
        weights.append(model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_run_records_the_planned_recipe(llama, text_file, loaded, tmp_path):
    recipe = budget_recipe(llama, text_file, {"prune": {"method": "magnitude", "budget": {
        "sparsity": 0.5, "levels": [0.25, 0.5, 0.75], "heldout": 1}}})
    store = ResultStore(tmp_path)
    from core.recipe.pipeline import run

    row = run(recipe, store)
    stored = yaml.safe_load(row.recipe)["steps"][0]["prune"]
    assert "budget" not in stored and stored["planned"]["budget"]["sparsity"] == 0.5
    assert row.details["steps"][0]["label"] == "magnitude planned >= 50% sparsity"
    planned_weights = sum(weight_matrix(layer).numel() for _, layer in block_linear_layers(loaded.model))
    assert row.params - row.nonzero_params >= 0.5 * planned_weights
    assert len(list((tmp_path / "plans").glob("atlas-*.json"))) == 1


def test_squeezelab_plan_writes_a_recipe_that_runs(llama, text_file, tmp_path, capsys):
    from core.cli.entry import main

    out = tmp_path / "plan.yaml"
    argv = ["plan", "--model", llama, "--quantize", "rtn", "--bits", "2", "4", "--group-size", "16", "--avg-bits", "3",
            "--calib-text", str(text_file), "--calib-samples", "4", "--calib-seqlen", "32", "--heldout", "1",
            "--text", str(text_file), "--seqlen", "32", "--max-windows", "2", "--no-latency", "--out", str(out),
            "--results-dir", str(tmp_path / "results"), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= {"predicted", "recipe", "layers"}
    assert printed["predicted"]["size_bytes"] > 0 and printed["predicted"]["perplexity"] > 0
    assert len(printed["layers"]) == 14 and {row["bits"] for row in printed["layers"]} <= {2, 4}
    assert yaml.safe_load(out.read_text()) == printed["recipe"]
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err  # nothing of the user's is overwritten
    assert main(["run", str(out), "--results-dir", str(tmp_path / "results"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "ok"


@pytest.mark.parametrize(("extra", "message"), [
    (["--quantize", "rtn", "--avg-bits", "-2"], "impossible"),
    (["--quantize", "rtn", "--bits", "3", "4", "--avg-bits", "2"], "below the smallest option"),
    (["--quantize", "rtn", "--sparsity", "0.5"], "--sparsity does not bound a quantize plan"),
    (["--quantize", "rtn", "--prune", "wanda", "--avg-bits", "3"], "one technique per plan"),
    (["--prune", "wanda", "--sparsity-levels", "0.25", "--sparsity", "0.5"],
     "beyond the sparsest option: the sparsest plan this menu allows has 25.0% sparsity"),
])
def test_bad_budgets_exit_2_with_a_message(llama, tmp_path, capsys, extra, message):
    from core.cli.entry import main

    code = main(["plan", "--model", llama, *extra, "--out", str(tmp_path / "p.yaml"), "--results-dir",
                 str(tmp_path / "r")])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "p.yaml").exists() and not (tmp_path / "r" / "plans").exists()


def test_layer_shapes_and_kept_weights():
    layer = LayerShape("x", 6, 10)
    assert layer.numel == 60
    assert kept_weights(6, 10, 0.5, "wanda") == 30 and kept_weights(6, 10, 0.55, "wanda") == 24
    assert kept_weights(6, 10, 0.55, "sparsegpt") == 27
    assert quantized_bytes(6, 10, Option(3, None, True)) == 6 * 4 + 6 * 2
    assert quantized_bytes(6, 10, Option(8, 5, False)) == 60 + 6 * 2 * 3
