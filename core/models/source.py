"""Model references, and what loading one gives: the model, its tokenizer, where it came from.

A model reference is one of (the same strings in the CLI, recipes and the UI):
  * ``sample:<name>`` - a bundled sample model (``sample:teacher``, ``sample:student``)
  * a local folder holding ``config.json`` and weights (also SqueezeLab's own exports: ``core.export``)
  * a path to a ``.gguf`` file (loaded through transformers' GGUF support and dequantized)
  * a Hugging Face Hub id such as ``HuggingFaceTB/SmolLM2-135M``
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import ModelNotFoundError

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "sample_models"

SAMPLE_PREFIX = "sample:"

# More descriptive names for the same bundled models.
SAMPLE_ALIASES = {"pycode-teacher": "teacher", "pycode-student": "student"}

DEFAULT_MODEL = "sample:teacher"


@dataclass(frozen=True)
class ModelSource:
    """Where a reference points: kind is "sample", "folder", "gguf" or "hub"."""

    ref: str
    kind: str
    location: str  # folder path, hub id, or folder of the .gguf file
    gguf_file: str | None = None

    @property
    def default_text(self) -> str:
        """The evaluation text source ``default`` means for this model."""
        return "sample" if self.kind == "sample" else "wikitext2"

    @property
    def default_calibration_text(self) -> str:
        """The calibration text source ``default`` means: training-side text, never the evaluation text."""
        return "sample-train" if self.kind == "sample" else "wikitext2-valid"


def context_length(config: Any) -> int:
    """Positions a model with this config can attend over (2048 when the config does not say)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def ensure_pad_token(tokenizer: Any) -> Any:
    """The tokenizer, with a pad token (its EOS or UNK token when the model defines none)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


@dataclass
class LoadedModel:
    """A model with its tokenizer and what was chosen to load it."""

    model: nn.Module
    tokenizer: object
    source: ModelSource
    device: torch.device
    dtype: torch.dtype

    @property
    def context_length(self) -> int:
        return context_length(self.model.config)


def sample_names() -> list[str]:
    """Names of the bundled sample models that are present."""
    if not SAMPLES_DIR.is_dir():
        return []
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if (p / "config.json").is_file())


def resolve(ref: str) -> ModelSource:
    """Classify a model reference without loading anything; raise if a local one does not exist."""
    ref = ref.strip()
    if ref.startswith(SAMPLE_PREFIX):
        name = SAMPLE_ALIASES.get(ref[len(SAMPLE_PREFIX):], ref[len(SAMPLE_PREFIX):])
        if name not in sample_names():
            raise ModelNotFoundError(
                f"no bundled sample model {ref!r}; available: "
                f"{', '.join(SAMPLE_PREFIX + n for n in sample_names()) or 'none (run squeezelab build-samples)'}"
            )
        return ModelSource(ref, "sample", str(SAMPLES_DIR / name))
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {ref!r} does not exist; check the path")
        return ModelSource(ref, "gguf", str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"folder {ref!r} has no config.json, so it is not a Hugging Face model folder; "
                "point at the folder that save_pretrained wrote, or at a .gguf file"
            )
        return ModelSource(ref, "folder", str(path.resolve()))
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1 or not ref:
        raise ModelNotFoundError(
            f"model {ref!r} is neither a folder with config.json, a .gguf file, a sample "
            f"({', '.join(SAMPLE_PREFIX + n for n in sample_names())}) nor a Hub id like org/name"
        )
    return ModelSource(ref, "hub", ref)
