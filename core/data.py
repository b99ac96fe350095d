"""Text sources, tokenization once, evaluation windows and calibration batches.

A text source is a string (the same in the CLI, recipes and the UI):
  * ``default``   - the model's own default text (a sample model's held-out text, else WikiText-2)
  * ``sample``    - the held-out text of the bundled sample models (Python standard-library source)
  * ``wikitext2`` - WikiText-2 raw test split, rows joined with "\\n\\n" (the papers' protocol)
  * a path to a ``.txt``, ``.parquet`` (column ``text``) or ``.jsonl`` (field ``text``) file
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import TextSourceError

SAMPLE_SOURCE = "sample"
SAMPLE_TRAIN_SOURCE = "sample-train"  # the samples' training text: their calibration default
WIKITEXT2_SOURCE = "wikitext2"
WIKITEXT2_VALID_SOURCE = "wikitext2-valid"  # calibration default for other models, disjoint from the test split
DEFAULT_SOURCE = "default"
PLAIN_TEXT_SUFFIXES = (".txt", ".raw", ".tokens")  # WikiText ships its splits as .raw / .tokens plain text
TEXT_SUFFIXES = (*PLAIN_TEXT_SUFFIXES, ".parquet", ".jsonl")
_REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Text:
    """A loaded text source: its name (as given) and its content."""

    name: str
    text: str


KNOWN_SOURCES = (DEFAULT_SOURCE, SAMPLE_SOURCE, SAMPLE_TRAIN_SOURCE, WIKITEXT2_SOURCE, WIKITEXT2_VALID_SOURCE,
                 "wikitext-2", "wikitext")


def shared_data_dir() -> Path | None:
    """The folder of reference data sets, if present (env ``SQUEEZELAB_DATA_DIR`` or ../shared/data)."""
    candidates = [os.environ.get("SQUEEZELAB_DATA_DIR"), _REPO_ROOT.parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def wikitext2_available() -> bool:
    """True when WikiText-2 raw test can be read without the network."""
    data_dir = shared_data_dir()
    return data_dir is not None and (data_dir / "wikitext-2-raw" / "test-00000-of-00001.parquet").is_file()


def load_text(source: str, default: str = WIKITEXT2_SOURCE) -> Text:
    """Load a text source by name or path; ``default`` says what ``"default"`` means for this model."""
    name = source.strip() if source else DEFAULT_SOURCE
    if name == DEFAULT_SOURCE:
        return Text(name, load_text(default, default=WIKITEXT2_SOURCE).text)
    if name == SAMPLE_SOURCE:
        return Text(name, sample_heldout_text())
    if name == SAMPLE_TRAIN_SOURCE:
        from sample_models.corpus import train_text

        return Text(name, train_text())
    if name == WIKITEXT2_VALID_SOURCE:
        return Text(name, wikitext2_valid_text())
    if name in (WIKITEXT2_SOURCE, "wikitext-2", "wikitext"):
        return Text(WIKITEXT2_SOURCE, wikitext2_test_text())
    return Text(name, read_text_file(Path(name)))


def check_source(source: str) -> None:
    """Refuse, before any work starts, a source that is neither a known name nor a readable file."""
    name = source.strip() if source else DEFAULT_SOURCE
    if name in KNOWN_SOURCES:
        return
    path = Path(name)
    if not path.is_file():
        read_text_file(path)  # raises the message that names the known sources
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise TextSourceError(f"cannot read {path.name!r}: text files must end in {', '.join(TEXT_SUFFIXES)}")


def sample_heldout_text() -> str:
    """The held-out evaluation text of the sample models (read from this interpreter's stdlib)."""
    from sample_models.corpus import heldout_text

    try:
        return heldout_text()
    except FileNotFoundError as exc:
        raise TextSourceError(str(exc)) from exc


def wikitext2_test_text() -> str:
    """WikiText-2 raw test rows joined with "\n\n", from local data or the `datasets` loader."""
    local = _shared_file("wikitext-2-raw", "test-00000-of-00001.parquet")
    if local is not None:
        return "\n\n".join(_parquet_rows(local))
    return "\n\n".join(_datasets_rows("wikitext-2-raw-v1", "test", "wikitext-2-raw/test-00000-of-00001.parquet"))


def wikitext2_valid_text() -> str:
    """WikiText-2 validation split (tokenized v1 text), for calibration; local copy or `datasets`."""
    local = _shared_file("wikitext-2-tokens", "wiki.valid.tokens")
    if local is not None:
        return local.read_text(encoding="utf-8")
    return "".join(_datasets_rows("wikitext-2-v1", "validation", "wikitext-2-tokens/wiki.valid.tokens"))


def _shared_file(*parts: str) -> Path | None:
    data_dir = shared_data_dir()
    path = data_dir.joinpath(*parts) if data_dir is not None else None
    return path if path is not None and path.is_file() else None


def _datasets_rows(config: str, split: str, local_name: str) -> list[str]:
    """Rows of a WikiText split through the `datasets` loader, or a TextSourceError saying what to do."""
    try:
        import datasets  # optional: only used when no local copy exists

        return list(datasets.load_dataset("wikitext", config, split=split)["text"])
    except Exception as exc:  # ImportError, network errors, missing cache: all mean "not available"
        raise TextSourceError(
            f"WikiText-2 ({split}) is not available: no local copy was found (set SQUEEZELAB_DATA_DIR to a "
            f"folder holding {local_name}) and the `datasets` loader failed ({type(exc).__name__}). "
            "Use --text sample or a local .txt/.parquet/.jsonl file instead."
        ) from exc


def read_text_file(path: Path) -> str:
    """Read a ``.txt``, ``.parquet`` (column ``text``) or ``.jsonl`` (field ``text``) file."""
    if not path.exists():
        raise TextSourceError(
            f"text source {str(path)!r} is neither a known name ({DEFAULT_SOURCE}, {SAMPLE_SOURCE}, "
            f"{WIKITEXT2_SOURCE}) nor an existing file; give one of those or a path to a "
            f"{'/'.join(TEXT_SUFFIXES)} file"
        )
    suffix = path.suffix.lower()
    if suffix in PLAIN_TEXT_SUFFIXES:
        return path.read_text(encoding="utf-8", errors="replace")
    if suffix == ".parquet":
        return "\n\n".join(_parquet_rows(path))
    if suffix == ".jsonl":
        return "\n\n".join(_jsonl_rows(path))
    raise TextSourceError(f"cannot read {path.name!r}: text files must end in {', '.join(TEXT_SUFFIXES)}")


def _parquet_rows(path: Path) -> list[str]:
    import pandas as pd

    frame = pd.read_parquet(path)
    if "text" not in frame.columns:
        raise TextSourceError(f"{path} has no column 'text' (columns: {', '.join(map(str, frame.columns))})")
    return [str(value) for value in frame["text"].fillna("")]


def _jsonl_rows(path: Path) -> list[str]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextSourceError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or "text" not in record:
            raise TextSourceError(f"{path}, line {number}: each line must be an object with a 'text' field")
        rows.append(str(record["text"]))
    return rows


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Tokenize the whole text once, as the papers do (special tokens as the tokenizer adds them).

    Returns a 1-D LongTensor of token ids. Long texts exceed the model's context on purpose: they
    are windowed afterwards, so the tokenizer's length warning is silenced (``verbose=False``)
    rather than changing the shared tokenizer.
    """
    return tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0].long()


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut token ids into non-overlapping windows of ``seqlen`` (tail dropped): shape [n, seqlen]."""
    if seqlen < 2:
        raise TextSourceError(f"seqlen must be at least 2 tokens, got {seqlen}")
    count = ids.numel() // seqlen
    if count == 0:
        raise TextSourceError(
            f"the text has {ids.numel()} tokens but one window needs at least {seqlen}; "
            f"use a longer text or a smaller --seqlen (at most {max(ids.numel(), 2)})"
        )
    if max_windows is not None:
        if max_windows < 1:
            raise TextSourceError(f"max_windows must be at least 1, got {max_windows}")
        count = min(count, max_windows)
    return ids[: count * seqlen].view(count, seqlen)


def calibration_batches(ids: torch.Tensor, samples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """``samples`` random windows of ``seqlen`` tokens (seeded, as GPTQ draws them): [samples, seqlen]."""
    if samples < 1:
        raise TextSourceError(f"calibration needs at least 1 sample, got {samples}")
    if ids.numel() <= seqlen:
        raise TextSourceError(
            f"calibration text has {ids.numel()} tokens; it needs more than seqlen={seqlen}. "
            "Use a longer text or a smaller seqlen."
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (samples,), generator=generator)
    return torch.stack([ids[start : start + seqlen] for start in starts.tolist()])
