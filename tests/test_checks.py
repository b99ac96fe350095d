"""The one set of validators: the same mistake reads the same in every spec."""

from __future__ import annotations

import re

import pytest

from core.calibration import CalibrationSpec
from core.checks import check_keys, is_count, is_number, name_patterns, require, require_mapping
from core.distill import DistillSpec
from core.errors import SpecError
from core.evaluate import EvalSpec
from core.export import ExportSpec
from core.prune import PruneSpec
from core.prune.step import PruneStep
from core.prune.structured import StructuredSpec
from core.quantize import QuantizeSpec
from core.recipe import Recipe

UNKNOWN = re.compile(r"unknown [a-z `:]+\(s\) colour( in [^;]+)?; allowed: ")


def test_require_raises_spec_error_with_the_message():
    require(True, "never shown")
    with pytest.raises(SpecError, match="^exactly this$"):
        require(False, "exactly this")


@pytest.mark.parametrize(("value", "minimum", "expected"), [
    (3, 1, True), (0, 1, False), (True, 0, False), (2.0, 0, False), ("2", 0, False), (-1, -1, True)])
def test_is_count_refuses_bools_floats_and_small_numbers(value, minimum, expected):
    assert is_count(value, minimum) is expected


@pytest.mark.parametrize(("value", "expected"), [(1, True), (0.5, True), (float("nan"), False),
                                                 (float("inf"), False), (False, False), ("1", False)])
def test_is_number_wants_finite_numbers(value, expected):
    assert is_number(value) is expected


def test_check_keys_names_the_unknown_and_every_allowed_key():
    check_keys({"a": 1}, ("a", "b"), "thing")
    with pytest.raises(SpecError) as info:
        check_keys({"a": 1, "z": 2, "y": 3}, ("a", "b"), "thing", "`here:`")
    assert str(info.value) == "unknown thing(s) y, z in `here:`; allowed: a, b"


def test_mappings_and_patterns_are_checked():
    with pytest.raises(SpecError, match=r"`x:` must be a mapping such as \{a: 1\}, got \[1\]"):
        require_mapping([1], "`x:`", "{a: 1}")
    assert name_patterns("*mlp*", "include") == ("*mlp*",)
    with pytest.raises(SpecError, match="include must be a list of shell patterns"):
        name_patterns([""], "include")


@pytest.mark.parametrize("build", [
    lambda: PruneSpec.from_dict({"method": "magnitude", "sparsity": 0.5, "colour": 1}),
    lambda: PruneStep.from_dict({"method": "magnitude", "sparsity": 0.5, "colour": 1}),
    lambda: StructuredSpec.from_dict({"target": "heads", "fraction": 0.5, "colour": 1}),
    lambda: QuantizeSpec.from_dict({"method": "rtn", "colour": 1}),
    lambda: QuantizeSpec.from_dict({"method": "rtn", "overrides": [{"pattern": "*", "colour": 1}]}),
    lambda: DistillSpec.from_dict({"colour": 1}),
    lambda: ExportSpec.from_dict({"format": "hf", "colour": 1}),
    lambda: Recipe.from_dict({"model": "m", "colour": 1}),
    lambda: Recipe.from_dict({"model": "m", "evaluation": {"colour": 1}}),
    lambda: Recipe.from_dict({"model": "m", "calibration": {"colour": 1}}),
], ids=["prune", "prune-step", "structured", "quantize", "override", "distill", "export", "recipe", "evaluation",
        "calibration"])
def test_an_unknown_key_reads_the_same_in_every_spec(build):
    with pytest.raises(SpecError) as info:
        build()
    assert UNKNOWN.match(str(info.value)), str(info.value)


def test_sections_are_validated_by_their_own_specs():
    with pytest.raises(SpecError, match="calibration.samples"):
        CalibrationSpec(samples=0)
    with pytest.raises(SpecError, match="evaluation.seqlen"):
        EvalSpec(seqlen=1)
