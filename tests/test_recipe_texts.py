"""What ``default`` means for a model's texts, and the warning for calibration or training text from another
domain than the evaluation text (core/recipe/texts.py and its notes in a run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import models
from core.calibration import CalibrationSpec
from core.evaluate import EvalSpec
from core.recipe import Recipe, Step, domain_warning, pipeline, resolved_source, step_context, text_domain
from core.recipe.texts import PYTHON_SOURCE, WIKITEXT, text_notes
from core.store import ResultStore
from tests.helpers import corpus_text


def test_default_resolves_per_model(llama):
    sample, folder = models.resolve("sample:teacher"), models.resolve(llama)
    assert resolved_source("default", sample.default_calibration_text) == "sample-train"
    assert resolved_source("default", sample.default_text) == "sample"
    assert resolved_source(" default ", folder.default_calibration_text) == "wikitext2-valid"
    assert resolved_source("default", folder.default_text) == "wikitext2"
    assert resolved_source("my.txt", "sample-train") == "my.txt"


def test_a_recipes_calibration_default_is_the_models_training_side_text(llama):
    for ref, expected in (("sample:student", "sample-train"), (llama, "wikitext2-valid")):
        loaded = models.load(ref, device="cpu")
        assert step_context(Recipe(model=ref), loaded, None, None).default_text == expected


@pytest.mark.parametrize("source, domain", [
    ("sample", PYTHON_SOURCE), ("sample-train", PYTHON_SOURCE), ("wikitext2", WIKITEXT), ("wikitext2-valid", WIKITEXT),
    ("/data/wikitext-2-tokens/wiki.valid.tokens", WIKITEXT), ("/data/wikitext-2-raw/test-00000-of-00001.parquet",
                                                               WIKITEXT),
    ("/home/me/notes.txt", None),
])
def test_text_domains(source, domain):
    assert text_domain(source) == domain


def test_only_known_different_domains_warn():
    assert "another domain than the evaluation text 'wikitext2'" in domain_warning("calibration", "sample-train",
                                                                                   "wikitext2")
    assert domain_warning("training", "wikitext2-valid", "wikitext2") is None
    assert domain_warning("calibration", "sample-train", "sample") is None
    assert domain_warning("calibration", "my.txt", "wikitext2") is None  # a file of the user's own: cannot tell


def test_text_notes_name_calibration_only_when_a_step_reads_it():
    source = models.resolve("sample:teacher")
    evaluation = EvalSpec(text="wikitext2")
    rtn = Recipe(model="sample:teacher", evaluation=evaluation, steps=(Step("quantize", {"method": "rtn"}),))
    assert text_notes(rtn, source) == []
    gptq = Recipe(model="sample:teacher", evaluation=evaluation, steps=(Step("quantize", {"method": "gptq"}),))
    (note,) = text_notes(gptq, source)
    assert note.startswith("the calibration text 'sample-train' (Python source)")
    distill = Recipe(model="sample:teacher", evaluation=evaluation, steps=(Step("distill", {"student": "self"}),))
    assert text_notes(distill, source)[0].startswith("the training text 'sample-train'")


def test_a_run_calibrated_on_another_domain_says_so_in_its_notes(tmp_path: Path):
    wiki = tmp_path / "wiki.test.raw"  # a WikiText file by its name
    wiki.write_text(corpus_text(), encoding="utf-8")
    recipe = Recipe(model="sample:student", steps=(Step("prune", {"method": "wanda", "sparsity": 0.5}),),
                    calibration=CalibrationSpec(text="default", samples=4, seqlen=32),
                    evaluation=EvalSpec(text=str(wiki), seqlen=32, max_windows=2, latency=False))
    row = pipeline.run(recipe, ResultStore(tmp_path / "results"))
    assert row.status == "ok"
    assert any("calibration text 'sample-train' (Python source) is from another domain" in note
               for note in row.details["notes"])
