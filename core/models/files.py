"""Check a model's files before a library parses them, so a damaged file is named with what to do about it.

transformers, safetensors, tokenizers and gguf report a truncated or garbled file as whatever broke first deep
inside them (a JSONDecodeError, a SafetensorError, a bare Exception, a numpy reshape error). These checks read
what each format promises about itself - JSON that parses, a safetensors header whose offsets cover the file, a
tokenizer the tokenizers library accepts, a GGUF header and tensor table that fit in the file - and raise a
``ModelFileError`` that names the file. They read headers, not weights: a check costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.errors import ModelFileError

# JSON files a transformers folder may hold; each is read by transformers when present.
JSON_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
              "added_tokens.json", "vocab.json", "model.safetensors.index.json", "tokenizer.json")
GGUF_MAGIC = b"GGUF"
REDO = "download the model again, or save it again with save_pretrained"


def read_json(path: Path) -> Any:
    """The content of a JSON file, or a ModelFileError saying it is unreadable, empty, binary or cut short."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read {path} ({exc.strerror or exc}); check that it is a file you may read") \
            from exc
    if not raw.strip():
        raise ModelFileError(f"{path} is empty; {REDO}")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelFileError(f"{path} is not JSON text (byte {exc.start} is 0x{raw[exc.start]:02x}, which is not "
                             f"UTF-8): the file is binary or damaged; {REDO}") from exc
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): the "
                             f"file is damaged or cut short; {REDO}") from exc


def read_config_json(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict (a model config is a JSON object)."""
    path = Path(folder) / "config.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path} must hold a JSON object such as {{\"model_type\": \"llama\", ...}}, not a "
                             f"{type(raw).__name__}; {REDO}")
    return raw


def check_folder(folder: Path) -> None:
    """Check every JSON file, the tokenizer and every safetensors file of a model folder (headers only)."""
    folder = Path(folder)
    read_config_json(folder)
    for name in JSON_FILES[1:-1]:
        if (folder / name).exists():
            read_json(folder / name)
    if (folder / "tokenizer.json").exists():
        check_tokenizer_json(folder / "tokenizer.json")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        _check_index(index)
    for path in sorted(folder.glob("*.safetensors")):
        check_safetensors(path)


def check_tokenizer_json(path: Path) -> None:
    """A ``tokenizer.json`` the tokenizers library can build a tokenizer from."""
    from tokenizers import Tokenizer

    read_json(path)  # the clear message for an empty, binary or cut-short file
    try:
        Tokenizer.from_str(Path(path).read_text(encoding="utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception for any file it cannot parse
        raise ModelFileError(f"{path} is JSON but not a tokenizer the tokenizers library can read ({exc}); "
                             f"{REDO}") from exc


def _check_index(index: Path) -> None:
    content = read_json(index)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelFileError(f"{index} has no \"weight_map\" object naming the weight files; {REDO}")
    missing = sorted({str(name) for name in weight_map.values()} - {p.name for p in index.parent.iterdir()})
    if missing:
        raise ModelFileError(f"{index} names weight files that are not in the folder: {', '.join(missing[:3])}; "
                             f"{REDO}")


def check_safetensors(path: Path) -> None:
    """A safetensors file whose header parses and whose tensors cover the file exactly (so not cut short)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} is not a file; the weights must be a safetensors file")
    if path.stat().st_size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes); {REDO}")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as exc:
        raise ModelFileError(f"{path} is not a complete safetensors file ({exc}): it is damaged or cut short (an "
                             f"interrupted download?); {REDO}") from exc


def check_gguf(path: Path) -> None:
    """A GGUF file: not empty, the GGUF magic, and a header and tensor table that fit in the file."""
    import importlib.util

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path} is empty (0 bytes); download the .gguf file again")
    with path.open("rb") as file:
        magic = file.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"{path} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r}); give a "
                             ".gguf file written by llama.cpp or the gguf package")
    if importlib.util.find_spec("gguf") is None:
        return  # the loader says which package is missing
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, IndexError, KeyError) as exc:  # gguf's reader meets a table that runs past the end
        raise ModelFileError(f"{path} is a damaged or truncated GGUF file ({exc}); download it again") from exc
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise ModelFileError(f"{path} is cut short: its tensors need {end:,} bytes but the file has {size:,}; "
                             "download it again")


def check_loading_info(info: dict[str, Any], where: str) -> None:
    """Refuse a model transformers loaded with tensors missing or of the wrong shape (they would be random)."""
    mismatched = list(info.get("mismatched_keys") or ())
    if mismatched:
        name, in_file, in_model = mismatched[0]
        raise ModelFileError(
            f"{where}: the weights and config.json disagree on {len(mismatched)} tensor(s), e.g. {name} is "
            f"{list(in_file)} in the weights but {list(in_model)} by the config; the folder mixes files of "
            f"different models: {REDO}")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ModelFileError(
            f"{where}: the weights lack {len(missing)} tensor(s) the config needs, e.g. {', '.join(missing[:3])} "
            f"(they would be random); the weights file is incomplete or from another model: {REDO}")
