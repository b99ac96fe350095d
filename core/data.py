"""Text sources, tokenization once, evaluation windows and calibration batches.

A text source is a string (the same in the CLI, recipes and the UI):
  * ``default``   - the model's own default text (a sample model's held-out text, else WikiText-2)
  * ``sample``    - the held-out text of the bundled sample models (Python standard-library source)
  * ``wikitext2`` - WikiText-2 raw test split, rows joined with "\\n\\n" (the papers' protocol)
  * a path to a ``.txt``, ``.parquet`` (column ``text``) or ``.jsonl`` (field ``text``) file
"""

from __future__ import annotations

import codecs
import functools
import json
import os
import re
import shlex
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
# Above this share of control characters a "text" is binary data (or UTF-16 read as UTF-8), and its
# perplexity would be a number about noise. Real text, even source code full of tabs, has next to none.
MAX_CONTROL_SHARE = 0.05
# Tab, newline, carriage return and form feed (Python's own source has form feeds) are text; the other
# C0 and C1 controls, DEL and U+FFFD (what an earlier lossy decode left) are not.
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")
# UTF-32 first: its little-endian mark begins with UTF-16's.
_BYTE_ORDER_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32LE"), (codecs.BOM_UTF32_BE, "UTF-32BE"),
                     (codecs.BOM_UTF16_LE, "UTF-16LE"), (codecs.BOM_UTF16_BE, "UTF-16BE"))
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
    """Refuse, before any work starts, a source that is neither a known name nor a readable text file.

    A file is read and checked in full (empty, not UTF-8, binary, a folder): what would fail the run fails
    here, before a result row is written. The text is kept for ``load_text``, so it is read once.
    """
    name = source.strip() if source else DEFAULT_SOURCE
    if name not in KNOWN_SOURCES:
        read_text_file(Path(name))


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
    """Read a ``.txt``, ``.parquet`` (column ``text``) or ``.jsonl`` (field ``text``) file as checked text.

    Refused, each with what to do: a missing file, a folder, an unknown suffix, an empty file, bytes that
    are not UTF-8 (where, and how to convert them), text that is mostly control characters.
    """
    if not path.exists():
        raise TextSourceError(
            f"text source {str(path)!r} is neither a known name ({DEFAULT_SOURCE}, {SAMPLE_SOURCE}, "
            f"{WIKITEXT2_SOURCE}) nor an existing file; give one of those or a path to a "
            f"{'/'.join(TEXT_SUFFIXES)} file"
        )
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise TextSourceError(f"cannot read {path.name!r}: text files must end in {', '.join(TEXT_SUFFIXES)}")
    if not path.is_file():
        raise TextSourceError(f"text source {str(path)!r} is a folder, not a file; give the path of the text file "
                              "inside it")
    stat = path.stat()
    return _read_checked(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_checked(path: str, _mtime_ns: int, _size: int) -> str:
    """The checked text of a file; keyed by modification time and size, so an edited file is read again."""
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        text = "\n\n".join(_parquet_rows(file))
    elif suffix == ".jsonl":
        text = "\n\n".join(_jsonl_rows(file))
    else:
        text = decode_text(_read_bytes(file), path)
    return check_text(text, path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TextSourceError(f"cannot read {path} ({exc.strerror or exc}); check that it is a file you may read") \
            from exc


def decode_text(raw: bytes, name: str) -> str:
    """``raw`` as UTF-8 text (a UTF-8 byte-order mark is dropped); ``name`` is how messages call the file.

    Other encodings are refused rather than guessed: UTF-16/32 by their byte-order mark, anything else at
    the first byte that is not UTF-8, each with the ``iconv`` command that converts it. Binary data is
    called binary. The text still needs ``check_text`` (empty, mostly control characters).
    """
    for mark, encoding in _BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            raise TextSourceError(
                f"{name} is {encoding} text (it starts with a {encoding[:6]} byte-order mark), but SqueezeLab reads "
                f"UTF-8; convert it first: iconv -f {encoding[:6]} -t UTF-8 {_quoted(name)} > {_converted(name)}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TextSourceError(_not_utf8_message(raw, exc.start, name)) from exc


def _not_utf8_message(raw: bytes, offset: int, name: str) -> str:
    line = raw.count(b"\n", 0, offset) + 1
    where = f"byte {offset}, on line {line}, is 0x{raw[offset]:02x}"
    controls = len(re.findall(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]", raw))
    if controls > MAX_CONTROL_SHARE * len(raw):
        return (f"{name} is binary data, not text: it is not UTF-8 ({where}) and {controls / len(raw):.0%} of its "
                "bytes are control codes; give a UTF-8 text file")
    return (f"{name} is not UTF-8 text: {where}. If it is Latin-1 (or another 8-bit encoding), convert it first: "
            f"iconv -f latin1 -t utf-8 {_quoted(name)} > {_converted(name)}")


def check_text(text: str, name: str) -> str:
    """``text`` if it is worth scoring; refuse an empty text, or one with more than ``MAX_CONTROL_SHARE`` of
    control characters (binary data, or UTF-16 without its byte-order mark, read as UTF-8)."""
    if not text.strip():
        raise TextSourceError(f"{name} holds no text ({'only whitespace' if text else 'it is empty'}); "
                              "give a file with text in it")
    controls = _CONTROL.findall(text)
    if len(controls) > MAX_CONTROL_SHARE * len(text):
        first = _CONTROL.search(text).start()
        hint = (f"; if it is UTF-16 text without a byte-order mark (a NUL after every letter), convert it: "
                f"iconv -f UTF-16LE -t UTF-8 {_quoted(name)} > {_converted(name)}") if "\x00" in controls else ""
        raise TextSourceError(
            f"{name} is not text: {len(controls) / len(text):.0%} of its {len(text):,} characters are control "
            f"characters (the first at character {first}); give a UTF-8 text file{hint}")
    return text


def _quoted(name: str) -> str:
    return shlex.quote(name)


def _converted(name: str) -> str:
    """Where the conversion command writes: ``notes.txt`` -> ``notes.utf8.txt`` beside it."""
    path = Path(name)
    return shlex.quote(str(path.with_name(f"{path.stem}.utf8{path.suffix or '.txt'}")))


def _parquet_rows(path: Path) -> list[str]:
    import pandas as pd
    import pyarrow

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise TextSourceError(
            f"{path} is not a readable Parquet file ({exc}); it may be truncated or in another format: write it "
            "again (e.g. pandas' DataFrame.to_parquet) or give a .txt file") from exc
    if "text" not in frame.columns:
        raise TextSourceError(f"{path} has no column 'text' (columns: {', '.join(map(str, frame.columns))})")
    values = frame["text"].fillna("")
    wrong = next((row for row, value in enumerate(values) if not isinstance(value, str)), None)
    if wrong is not None:
        raise TextSourceError(f"{path}: column 'text' holds {type(values.iloc[wrong]).__name__} values (row {wrong}), "
                              "not text; store the text as strings")
    return list(values)


def _jsonl_rows(path: Path) -> list[str]:
    rows = []
    # split on "\n" only: str.splitlines() would also split inside a record at U+2028 or U+0085
    for number, line in enumerate(decode_text(_read_bytes(path), str(path)).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TextSourceError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or "text" not in record:
            raise TextSourceError(f"{path}, line {number}: each line must be an object with a 'text' field")
        if not isinstance(record["text"], str):
            raise TextSourceError(
                f"{path}, line {number}: 'text' must be a string, got {json.dumps(record['text'])[:40]}")
        rows.append(record["text"])
    return rows


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Tokenize the whole text once, as the papers do (special tokens as the tokenizer adds them).

    Returns a 1-D LongTensor of token ids. Long texts exceed the model's context on purpose: they
    are windowed afterwards, so the tokenizer's length warning is silenced (``verbose=False``)
    rather than changing the shared tokenizer.
    """
    return tokenizer(text, return_tensors="pt", verbose=False)["input_ids"][0].long()


def added_bos(tokenizer) -> int | None:
    """The beginning-of-sequence id the tokenizer puts before every text it encodes (Gemma's, Llama 2's),
    or None when it adds none (GPT-2's, SmolLM2's): what the model saw first in training."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    first = tokenizer("a", verbose=False)["input_ids"]
    return int(bos) if len(first) > 0 and int(first[0]) == int(bos) else None


def without_leading_bos(ids: torch.Tensor, bos: int | None) -> torch.Tensor:
    """The text's ids without the BOS the tokenizer put first (windows cut from them put it back at each start)."""
    return ids[1:] if bos is not None and ids.numel() and int(ids[0]) == bos else ids


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None, bos: int | None = None) -> torch.Tensor:
    """Cut token ids into non-overlapping windows of ``seqlen`` (tail dropped): shape [n, seqlen].

    With ``bos`` (a tokenizer that adds one, see ``added_bos``) every window is ``bos`` followed by the
    next ``seqlen - 1`` tokens of the text (the text's own leading ``bos`` dropped): each window starts as
    the model's inputs did in training, and its scored tokens (all but the first) are all text, as
    llama.cpp's perplexity tool does per chunk."""
    if seqlen < 2:
        raise TextSourceError(f"seqlen must be at least 2 tokens, got {seqlen}")
    if bos is not None:
        body = without_leading_bos(ids, bos)
        cut = _cut(body, seqlen - 1, max_windows, f"{seqlen - 1} after the <bos> token", body.numel() + 1)
        return torch.cat([torch.full((cut.shape[0], 1), bos, dtype=cut.dtype), cut], dim=1)
    return _cut(ids, seqlen, max_windows, str(seqlen), ids.numel())


def _cut(ids: torch.Tensor, seqlen: int, max_windows: int | None, needed: str, longest: int) -> torch.Tensor:
    count = ids.numel() // seqlen if seqlen > 0 else 0
    if count == 0:
        raise TextSourceError(
            f"the text has {ids.numel()} tokens but one window needs at least {needed}; "
            f"use a longer text or a smaller --seqlen (at most {max(longest, 2)})"
        )
    if max_windows is not None:
        if max_windows < 1:
            raise TextSourceError(f"max_windows must be at least 1, got {max_windows}")
        count = min(count, max_windows)
    return ids[: count * seqlen].view(count, seqlen)


def calibration_batches(ids: torch.Tensor, samples: int, seqlen: int, seed: int = 0,
                        bos: int | None = None) -> torch.Tensor:
    """``samples`` random windows of ``seqlen`` tokens (seeded, as GPTQ draws them): [samples, seqlen].

    With ``bos`` (a tokenizer that adds one) each window is ``bos`` and ``seqlen - 1`` drawn tokens, so the
    activations calibrated on are those of inputs that start as the model's always do."""
    if bos is not None and seqlen > 1:
        drawn = calibration_batches(without_leading_bos(ids, bos), samples, seqlen - 1, seed)
        return torch.cat([torch.full((samples, 1), bos, dtype=drawn.dtype), drawn], dim=1)
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
