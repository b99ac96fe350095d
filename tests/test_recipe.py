"""Specs and recipes: defaults, refusals that name what was wrong, YAML/JSON round-trips."""

from __future__ import annotations

import json

import pytest
import yaml

from core.calibration import CalibrationSpec
from core.errors import SpecError
from core.evaluate import EvalSpec
from core.prune.step import PruneStep
from core.recipe import STEP_KINDS, Recipe, Step, load_recipe
from core.recipe import STEPS as PARSERS


def test_only_model_gets_defaults():
    recipe = Recipe.from_dict({"model": "sample:teacher"})
    assert recipe == Recipe(model="sample:teacher")
    assert recipe.steps == ()
    assert recipe.calibration == CalibrationSpec()
    assert recipe.evaluation == EvalSpec()
    assert recipe.export is None and recipe.device is None and recipe.dtype is None
    assert recipe.evaluation.text == "default"
    assert recipe.evaluation.seqlen is None
    assert recipe.evaluation.max_windows == 64
    assert recipe.calibration.samples == 128 and recipe.calibration.seqlen == 512 and recipe.calibration.seed == 0


@pytest.mark.parametrize("data", [{}, {"model": ""}, {"model": "   "}])
def test_model_is_required(data):
    with pytest.raises(SpecError, match="model"):
        Recipe.from_dict(data)


def test_recipe_must_be_a_mapping():
    with pytest.raises(SpecError, match="mapping"):
        Recipe.from_dict(["model", "sample:teacher"])  # type: ignore[arg-type]


def test_unknown_top_level_key_is_named():
    with pytest.raises(SpecError, match="modle"):
        Recipe.from_dict({"model": "sample:teacher", "modle": "x"})


def test_unknown_evaluation_key_is_named():
    with pytest.raises(SpecError, match="windows_max") as info:
        Recipe.from_dict({"model": "sample:teacher", "evaluation": {"windows_max": 3}})
    assert "evaluation" in str(info.value)


def test_unknown_calibration_key_is_named():
    with pytest.raises(SpecError, match="nsamples"):
        Recipe.from_dict({"model": "sample:teacher", "calibration": {"nsamples": 3}})


def test_section_must_be_a_mapping():
    with pytest.raises(SpecError, match="evaluation"):
        Recipe.from_dict({"model": "sample:teacher", "evaluation": [1, 2]})


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("evaluation", "seqlen", 1),
        ("evaluation", "max_windows", 0),
        ("evaluation", "new_tokens", -3),
        ("evaluation", "prompt_tokens", 0),
        ("evaluation", "latency_runs", 0),
        ("evaluation", "seqlen", "16"),
        ("evaluation", "compile", "yes"),
        ("evaluation", "compile", 1),
        ("calibration", "samples", 0),
        ("calibration", "seqlen", 1),
        ("calibration", "seed", 1.5),
    ],
)
def test_bad_values_name_key_and_value(section, key, value):
    with pytest.raises(SpecError) as info:
        Recipe.from_dict({"model": "sample:teacher", section: {key: value}})
    message = str(info.value)
    assert f"{section}.{key}" in message
    assert repr(value) in message


def test_spec_constructors_validate_directly():
    with pytest.raises(SpecError, match="-1"):
        EvalSpec(new_tokens=-1)
    with pytest.raises(SpecError, match="0"):
        CalibrationSpec(samples=0)


@pytest.mark.parametrize("kind", [*(k for k in STEP_KINDS if k not in PARSERS), "compile"])
def test_steps_without_an_engine_are_refused_by_name(kind):
    with pytest.raises(SpecError) as info:
        Recipe.from_dict({"model": "sample:teacher", "steps": [{kind: {"method": "x"}}]})
    assert repr(kind) in str(info.value) and "prune" in str(info.value)  # says which steps exist


def test_prune_step_parameters_are_validated_when_the_recipe_is_read():
    with pytest.raises(SpecError, match="sparsity"):
        Recipe.from_dict({"model": "sample:teacher", "steps": [{"prune": {"method": "wanda", "sparsity": 1.5}}]})
    with pytest.raises(SpecError, match="unknown prune parameter"):
        Recipe.from_dict({"model": "sample:teacher", "steps": [{"prune": {"method": "wanda", "sparsty": 0.5}}]})
    step = Recipe.from_dict({"model": "m", "steps": [{"prune": {"method": "wanda", "sparsity": 0.5}}]}).steps[0]
    assert isinstance(step.parsed, PruneStep) and step.parsed.spec.sparsity == 0.5


def test_unknown_step_kind_is_refused():
    with pytest.raises(SpecError, match="unknown step 'shrink'") as info:
        Recipe.from_dict({"model": "sample:teacher", "steps": [{"shrink": {}}]})
    assert "prune" in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        {"prune": {"sparsity": 0.5}, "quantize": {"bits": 4}},  # two keys
        {},  # no key
        "prune",
        ["prune", {"sparsity": 0.5}],
        None,
    ],
)
def test_step_must_be_a_one_key_mapping(raw):
    with pytest.raises(SpecError, match="one-key mapping"):
        Recipe.from_dict({"model": "sample:teacher", "steps": [raw]})


@pytest.mark.parametrize("params", [5, "abc"])
def test_step_parameters_must_be_a_mapping(params):
    with pytest.raises(SpecError):
        Recipe.from_dict({"model": "sample:teacher", "steps": [{"prune": params}]})


def test_empty_steps_is_an_evaluation_only_recipe():
    assert Recipe.from_dict({"model": "m", "steps": []}).steps == ()
    assert Recipe.from_dict({"model": "m", "steps": None}).steps == ()


def _full_recipe() -> Recipe:
    return Recipe(
        model="sample:student",
        calibration=CalibrationSpec(text="wikitext2", samples=16, seqlen=64, seed=3),
        evaluation=EvalSpec(text="data/eval.txt", seqlen=32, max_windows=None, latency=False,
                            prompt_tokens=16, new_tokens=8, latency_runs=2),
        export={"format": "hf", "path": "out/"},
        device="cpu",
        dtype="fp32",
    )


@pytest.mark.parametrize("recipe", [Recipe(model="sample:teacher"), _full_recipe()], ids=["defaults", "full"])
def test_yaml_round_trip(recipe):
    text = recipe.to_yaml()
    assert Recipe.from_dict(yaml.safe_load(text)) == recipe


@pytest.mark.parametrize("switch", [True, False, None])
def test_evaluation_compile_is_a_recipe_key_that_round_trips(switch):
    raw = {"model": "sample:teacher", "evaluation": {} if switch is None else {"compile": switch}}
    recipe = Recipe.from_dict(raw)
    assert recipe.evaluation.compile is switch  # omitted: None, compile where it pays
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe


def test_yaml_round_trip_with_steps():
    recipe = Recipe(
        model="sample:teacher",
        steps=(Step("prune", {"method": "wanda", "sparsity": 0.5, "pattern": "2:4"}),
               Step("prune", {"method": "structured", "target": "mlp_channels", "fraction": 0.25})),
    )
    data = yaml.safe_load(recipe.to_yaml())
    assert data["steps"][0] == {"prune": {"method": "wanda", "sparsity": 0.5, "pattern": "2:4"}}
    assert Recipe.from_dict(data) == recipe


def test_to_dict_leaves_out_unset_optionals():
    data = Recipe(model="sample:teacher").to_dict()
    assert data["model"] == "sample:teacher"
    assert data["steps"] == []
    assert not {"export", "device", "dtype"} & set(data)


def test_load_recipe_yaml(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: sample:teacher\nevaluation: {text: sample, seqlen: 64, max_windows: 2, latency: false}\n")
    recipe = load_recipe(path)
    assert recipe.model == "sample:teacher"
    assert recipe.evaluation == EvalSpec(text="sample", seqlen=64, max_windows=2, latency=False)


def test_load_recipe_yml_from_to_yaml(tmp_path):
    path = tmp_path / "recipe.yml"
    path.write_text(_full_recipe().to_yaml())
    assert load_recipe(str(path)) == _full_recipe()


def test_load_recipe_json(tmp_path):
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"model": "sample:teacher", "calibration": {"samples": 8, "seed": 1}}))
    recipe = load_recipe(path)
    assert recipe.calibration == CalibrationSpec(samples=8, seed=1)
    assert recipe.evaluation == EvalSpec()


def test_load_recipe_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="does not exist") as info:
        load_recipe(path)
    assert "nope.yaml" in str(info.value)


def test_load_recipe_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [sample:teacher\nsteps: {\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_recipe(path)


def test_load_recipe_invalid_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"model": "sample:teacher",}')
    with pytest.raises(SpecError, match="not valid JSON"):
        load_recipe(path)


@pytest.mark.parametrize("content", ["", "- model: sample:teacher\n", "just a string\n"])
def test_load_recipe_that_is_not_a_mapping(tmp_path, content):
    path = tmp_path / "odd.yaml"
    path.write_text(content)
    with pytest.raises(SpecError, match="mapping"):
        load_recipe(path)


def test_load_recipe_unknown_key_in_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("model: sample:teacher\nevaluation: {seqlen: 64, widows: 2}\n")
    with pytest.raises(SpecError, match="widows"):
        load_recipe(path)


@pytest.mark.parametrize(("context", "expected"), [(128, 128), (512, 512), (4096, 512), (2, 2)])
def test_resolved_seqlen_default_is_min_of_512_and_context(context, expected):
    assert EvalSpec().resolved_seqlen(context) == expected


def test_resolved_seqlen_explicit():
    assert EvalSpec(seqlen=64).resolved_seqlen(128) == 64
    assert EvalSpec(seqlen=128).resolved_seqlen(128) == 128


def test_resolved_seqlen_longer_than_context_is_refused():
    with pytest.raises(SpecError, match="longer than the model's context") as info:
        EvalSpec(seqlen=256).resolved_seqlen(128)
    assert "256" in str(info.value) and "128" in str(info.value)


def test_the_opt_ins_are_off_by_default_validated_and_written_only_when_on():
    plain = Recipe.from_dict({"model": "sample:teacher"})
    assert plain.allow_pickle is False and plain.trust_remote_code is False
    assert "allow_pickle" not in plain.to_yaml() and "trust_remote_code" not in plain.to_yaml()
    opted = Recipe.from_dict({"model": "sample:teacher", "allow_pickle": True, "trust_remote_code": True})
    assert opted.load_options == {"allow_pickle": True, "trust_remote_code": True}
    assert Recipe.from_dict(yaml.safe_load(opted.to_yaml())) == opted  # a stored recipe repeats the choice
    for key in ("allow_pickle", "trust_remote_code"):
        with pytest.raises(SpecError, match=f"{key} must be true or false, got 'yes'"):
            Recipe.from_dict({"model": "sample:teacher", key: "yes"})


def test_a_pickle_only_model_loads_only_when_the_recipe_opts_in(tmp_path, text_file):
    from core.errors import UnsafeModelError
    from core.recipe import pipeline
    from core.store import ResultStore
    from tests.helpers import pickle_only_folder

    folder = str(pickle_only_folder(tmp_path / "pickled"))
    recipe = {"model": folder, "evaluation": {"text": str(text_file), "seqlen": 16, "max_windows": 2, "latency": False}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(UnsafeModelError, match="allow_pickle"):
        pipeline.run(load_recipe(path), ResultStore(tmp_path / "results"))
    path.write_text(yaml.safe_dump({**recipe, "allow_pickle": True}))
    row = pipeline.run(load_recipe(path), ResultStore(tmp_path / "results"))
    assert row.status == "ok" and row.perplexity > 1
