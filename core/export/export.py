"""Export a compressed model in a format other tools load, and prove that it loads.

Formats (``ExportSpec.format``):

* ``hf``                 - a transformers folder (safetensors, tokenizer, generation config). Dense models load
                           with ``AutoModelForCausalLM.from_pretrained``; quantized or sparse ones keep SqueezeLab's
                           stored form (``core.export.hf``) and load with ``core.models.exported.load_exported``.
* ``compressed-tensors`` - llm-compressor's format, loaded by transformers and vLLM (``core.export.ct``).
* ``gguf``               - one ``.gguf`` file for llama.cpp / ollama: Llama, Mistral, Qwen2/3, Gemma-2/3, Phi-3,
                           GPT-2, GPT-NeoX, Falcon (``core.export.gguf``; the last three reload through SqueezeLab's
                           own GGUF reader, ``core.models.gguf_read``, which transformers' loader cannot replace).

Every export is written into a hidden, marked scratch folder beside the target, reloaded from there the way a
user would load it, re-evaluated on a few windows and compared with the model in memory; only then is it moved
into place (with its zip, when asked), all or nothing. A failure or a cancel removes the scratch folders and any
partial zip; scratch left by a killed process is removed by the next export into the same folder, and only scratch
SqueezeLab can prove it made (``core.export.files``).
Besides the weights, the folder holds ``squeezelab.json`` and a model card ``README.md`` (``core.export.card``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from core.checks import require
from core.errors import SpecError
from core.evaluate.size import measure_size
from core.export.card import write_metadata
from core.export.check import verify
from core.export.ct import check_ct, write_ct
from core.export.files import (
    check_free_space,
    check_target,
    folder_bytes,
    make_parents,
    make_scratch,
    move_into_place,
    os_error,
    release_scratch,
    remove_abandoned,
    remove_empty,
    zip_folder,
    zip_target,
)
from core.export.gguf import plan, write_gguf
from core.export.gguf_vocab import vocab_for
from core.export.hf import WriteReport, write_hf
from core.export.spec import FORMATS, ExportResult, ExportSpec
from core.models.device import DTYPES
from core.models.exported import is_squeezelab_folder
from core.progress import CancelFn, ProgressFn, report
from core.quantize.qlinear import QuantLinear

WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def _export_dtype(spec: ExportSpec, model: nn.Module) -> torch.dtype:
    if spec.dtype != "auto":
        return DTYPES[spec.dtype]
    quantized = any(isinstance(m, QuantLinear) for m in model.modules())
    float_dtype = next(model.parameters()).dtype
    if quantized and float_dtype == torch.float32:
        # What stays unquantized (embedding, norms, an unquantized lm_head) in 16 bits, as the GGUF writer does:
        # in fp32 a large vocabulary's embedding alone can outweigh the packed layers (dtype: fp32 keeps it).
        # The scales SqueezeLab stores are fp16; llm-compressor's checkpoints are 16-bit too.
        return torch.float16
    return float_dtype


def precheck(model: nn.Module, tokenizer, spec: ExportSpec) -> None:
    """Raise SpecError (what cannot be written, and what can) before anything is written."""
    if spec.format == "compressed-tensors":
        check_ct(model)
    elif spec.format == "gguf":
        plan(model, spec.gguf_type, spec.requantize)
        vocab_for(tokenizer, model.config.vocab_size)


def writable_formats(model: nn.Module, tokenizer) -> dict[str, str | None]:
    """Every format with None where this model can be written in it, else the reason it cannot."""
    reasons: dict[str, str | None] = {}
    for name in FORMATS:
        try:
            precheck(model, tokenizer, ExportSpec(format=name))
            reasons[name] = None
        except SpecError as exc:
            reasons[name] = str(exc)
    return reasons


def _write(model: nn.Module, tokenizer, spec: ExportSpec, folder: Path, cancel) -> WriteReport:
    dtype = _export_dtype(spec, model)
    if spec.format == "hf":  # narrowed by default (auto), the config keeps the dtype the model runs in
        config_dtype = next(model.parameters()).dtype if spec.dtype == "auto" else dtype
        return write_hf(model, tokenizer, folder, dtype, spec.sparse, cancel, config_dtype)
    if spec.format == "compressed-tensors":
        return write_ct(model, tokenizer, folder, dtype, cancel)
    return write_gguf(model, tokenizer, folder, spec.gguf_type, spec.requantize, cancel)


def export_model(
    model: nn.Module,
    tokenizer,
    spec: ExportSpec,
    windows: torch.Tensor,
    out: str | Path | None = None,
    recipe: dict | None = None,
    metrics: dict | None = None,
    check_text: str | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    perplexity_before: float | None = None,
    record_path: str | Path | None = None,
) -> ExportResult:
    """Write ``model`` as ``spec`` says to ``out`` (default ``spec.path``), reload it, check it, move it into place.

    ``windows`` [n, seqlen] are evaluation windows (the first ``spec.check_windows`` are scored);
    ``recipe`` and ``metrics`` (a result row's fields) go into ``squeezelab.json`` and the model card.
    ``perplexity_before``: the model's perplexity on all of ``windows`` if the caller just measured it,
    so the check does not score the same windows twice. ``record_path``: where the artifact will finally
    live when the caller moves ``out`` on afterwards (the result store does); recorded instead of ``out``.
    Raises SpecError (the model cannot be written in this format) or ExportError (the path) with nothing
    left behind; the model is not changed.
    """
    target, needed = _checked_target(model, tokenizer, spec, out)
    final = Path(record_path).expanduser() if record_path is not None else target
    made, scratches = [], []
    try:
        made = make_parents(target)
        scratches.append(make_scratch(target, "write"))
        content = scratches[0] / target.name
        content.mkdir()
        result = _write_and_check(model, tokenizer, spec, windows, content, final, check_text, on_progress, cancel,
                                  perplexity_before)
        result.zip_path = str(zip_target(final)) if spec.zip else None
        result.size_bytes = write_records(content, result, recipe, metrics)
        zip_file = _zip(content, target, result, scratches, on_progress) if spec.zip else None
        move_into_place(content, target, zip_file, spec.overwrite)
        report(on_progress, "export: done", 1.0)
        return result
    except OSError as exc:
        raise os_error(exc, target, needed) from exc
    finally:
        for folder in scratches:
            release_scratch(folder)
        if not os.path.lexists(target):
            remove_empty(made)


def _zip(content: Path, target: Path, result: ExportResult, scratches: list[Path],
         on_progress: ProgressFn | None) -> Path:
    """Zip ``content`` into a marked scratch folder of its own (added to ``scratches``); returns the zip file."""
    report(on_progress, "export: zip", 0.0)
    scratches.append(make_scratch(target, "zip"))
    zip_file = scratches[-1] / zip_target(target).name
    result.zip_bytes = zip_folder(content, zip_file, target.name)
    return zip_file


def write_records(folder: Path, result: ExportResult, recipe: dict | None, metrics: dict | None) -> int:
    """Write ``squeezelab.json`` and the card with the folder's real size, which includes them; returns that size.

    The size is written into the very file it counts, so it is settled by rewriting until it no longer changes
    (twice or three times: only the number of its digits can move it). The zip's size cannot be recorded in a
    file the zip holds, so ``zip_bytes`` stays empty there (the result row has it).
    """
    for _ in range(8):
        write_metadata(folder, {**result.as_dict(), "zip_bytes": None}, recipe, metrics)
        size = folder_bytes(folder)
        if size == result.size_bytes:
            return size
        result.size_bytes = size
    raise RuntimeError(f"the size of {folder} kept changing while its record was written")


def space_needed(weight_bytes: int, zip: bool) -> int:
    """Disk bytes an export of weights this size may take: the files (metadata, tokenizer: 20 MB at most beside
    10% for headers and padding), and the zip written beside them."""
    return int(weight_bytes * (2.1 if zip else 1.1)) + 20_000_000


def _checked_target(model: nn.Module, tokenizer, spec: ExportSpec, out: str | Path | None) -> tuple[Path, int]:
    """(the folder to create, the bytes it may need) after every check that can fail before writing."""
    target = Path(out if out is not None else spec.path or "").expanduser()
    require(str(target) not in ("", "."), "an export needs a path: `export: {format: hf, path: out/model}`")
    target = Path(os.path.abspath(target))
    precheck(model, tokenizer, spec)
    check_target(target, spec.overwrite, spec.zip)
    needed = space_needed(measure_size(model).size_bytes, spec.zip)
    check_free_space(target, needed)
    remove_abandoned(target.parent)
    return target, needed


def _write_and_check(model: nn.Module, tokenizer, spec: ExportSpec, windows: torch.Tensor, scratch: Path,
                     target: Path, check_text: str | None, on_progress: ProgressFn | None, cancel: CancelFn | None,
                     perplexity_before: float | None) -> ExportResult:
    """Write the artifact into ``scratch``, reload and check it; the result as it will be at ``target``."""
    report(on_progress, "export: write", 0.0)
    started = time.perf_counter()
    written = _write(model, tokenizer, spec, scratch, cancel)
    export_s = time.perf_counter() - started
    check = verify(model, tokenizer, spec, scratch, written, windows, check_text, on_progress, cancel,
                   perplexity_before)
    return ExportResult(
        format=spec.format, path=str(target), gguf_file=written.details.get("gguf_file"),
        squeezelab_format=is_squeezelab_folder(scratch),
        weights_bytes=sum(p.stat().st_size for p in scratch.iterdir() if p.suffix in WEIGHT_SUFFIXES),
        promised_bytes=written.promised_bytes, tolerance=spec.tolerance, export_s=export_s, lossy=written.lossy,
        dtype=str(_export_dtype(spec, model)).replace("torch.", "") if spec.format != "gguf" else None,
        notes=written.notes, **check)
