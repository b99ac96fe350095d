"""The bundled sample models: present, documented, real (they degrade under compression), rebuildable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import data, evaluate, models
from sample_models import corpus

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
NAMES = ("teacher", "student")
EVAL_WINDOWS = 8


def build_info(name: str) -> dict:
    return json.loads((SAMPLES / name / "build_info.json").read_text())


@pytest.fixture(scope="module")
def sample_windows() -> dict[str, torch.Tensor]:
    """The first windows of the held-out text (both samples share one tokenizer)."""
    loaded = models.load("sample:student", device="cpu")
    ids = data.tokenize(loaded.tokenizer, data.sample_heldout_text())
    return {"windows": data.windows(ids, loaded.context_length, EVAL_WINDOWS)}


@pytest.mark.parametrize("name", NAMES)
def test_sample_folder_is_a_complete_hf_model(name):
    folder = SAMPLES / name
    for required in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "generation_config.json", "README.md", "build_info.json"):
        assert (folder / required).is_file(), f"{name} lacks {required}"
    card = (folder / "README.md").read_text()
    for section in ("parameters", "held-out perplexity", "next-token accuracy", "Example generations",
                    "build time", "tokens seen", "License"):
        assert section in card, f"{name}'s model card lacks {section!r}"


def test_sample_files_fit_the_size_budget():
    total = sum(p.stat().st_size for name in NAMES for p in (SAMPLES / name).rglob("*") if p.is_file())
    assert total <= 30 * 2**20, f"sample files take {total / 2**20:.1f} MiB, over the 30 MiB budget"


def test_sample_sizes_and_quality_as_promised():
    teacher, student = build_info("teacher"), build_info("student")
    assert 2_000_000 <= teacher["params"] <= 8_000_000
    assert 500_000 <= student["params"] <= 1_500_000
    for info in (teacher, student):
        assert info["heldout_perplexity"] < info["vocab_size"] / 20, "far below the uniform baseline"
    assert teacher["heldout_perplexity"] < 0.9 * student["heldout_perplexity"], "the teacher is clearly better"


@pytest.mark.parametrize("name", NAMES)
def test_aliases_and_plain_transformers_load_the_same_model(name):
    from transformers import AutoModelForCausalLM

    via_ref = models.load(f"sample:{name}", device="cpu")
    via_alias = models.load(f"sample:pycode-{name}", device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(SAMPLES / name)
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.inference_mode():
        reference = plain(ids).logits
        assert torch.equal(via_ref.model(ids).logits, reference)
        assert torch.equal(via_alias.model(ids).logits, reference)
    assert via_ref.tokenizer.pad_token is not None
    assert via_ref.source.default_text == "sample"


@pytest.mark.parametrize("name", NAMES)
def test_sample_evaluation_matches_its_card(name, sample_windows):
    loaded = models.load(f"sample:{name}", device="cpu")
    quality = evaluate.evaluate_quality(loaded.model, sample_windows["windows"])
    # The first windows are not the whole held-out text, so only the order of magnitude must agree.
    assert quality.perplexity < build_info(name)["heldout_perplexity"] * 2
    assert quality.perplexity < len(loaded.tokenizer) / 20


def _add_weight_noise(model: torch.nn.Module, scale: float, seed: int = 0) -> None:
    """Gaussian noise of ``scale`` times each linear weight's own standard deviation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = module.weight
                noise = torch.randn(weight.shape, generator=generator) * weight.std() * scale
                weight.add_(noise)


def test_teacher_degrades_monotonically_under_growing_weight_noise(sample_windows):
    base = models.load("sample:teacher", device="cpu")
    perplexities = []
    for scale in (0.0, 0.1, 0.25, 0.5, 1.0):
        noisy = models.clone(base.model)
        _add_weight_noise(noisy, scale)
        perplexities.append(evaluate.evaluate_quality(noisy, sample_windows["windows"]).perplexity)
    assert perplexities == sorted(perplexities), f"perplexity should only rise with noise: {perplexities}"
    assert perplexities[-1] > 1.5 * perplexities[0]
    assert torch.equal(base.model.model.layers[0].mlp.up_proj.weight,
                       models.load("sample:teacher", device="cpu").model.model.layers[0].mlp.up_proj.weight)


def test_heldout_and_training_modules_are_disjoint_and_present():
    assert not set(corpus.HELDOUT_MODULES) & set(corpus.TRAIN_MODULES)
    assert len(corpus.module_texts(corpus.HELDOUT_MODULES, required=True)) == len(corpus.HELDOUT_MODULES)


def test_smoke_build_writes_loadable_folders(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SAMPLES / "build.py"), "--smoke", "--out-dir", str(tmp_path), "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out perplexity" in result.stdout
    for name in NAMES:
        loaded = models.load(str(tmp_path / name), device="cpu")
        assert loaded.model.config.model_type == "llama"
        assert not list(tmp_path.glob(f".{name}.*")), "no temporary build folders are left behind"


@pytest.mark.slow
def test_full_rebuild_reproduces_the_committed_models(tmp_path):
    """`python sample_models/build.py` rebuilds models within 2% of the committed held-out perplexity."""
    result = subprocess.run([sys.executable, str(SAMPLES / "build.py"), "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=45 * 60)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in NAMES:
        rebuilt = json.loads((tmp_path / name / "build_info.json").read_text())["heldout_perplexity"]
        committed = build_info(name)["heldout_perplexity"]
        assert abs(rebuilt - committed) / committed <= 0.02, f"{name}: rebuilt {rebuilt:.3f}, committed {committed:.3f}"
