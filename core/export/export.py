"""Export a compressed model in a format other tools load, and prove that it loads.

Formats (``ExportSpec.format``):

* ``hf``                 - a transformers folder (safetensors, tokenizer, generation config). Dense models load
                           with ``AutoModelForCausalLM.from_pretrained``; quantized or sparse ones keep SqueezeLab's
                           stored form (``core.export.hf``) and load with ``core.models.exported.load_exported``.
* ``compressed-tensors`` - llm-compressor's format, loaded by transformers and vLLM (``core.export.ct``).
* ``gguf``               - one ``.gguf`` file for llama.cpp / ollama, Llama-family models (``core.export.gguf``).

Every export is written into a hidden scratch folder beside the target, reloaded from there the way a user
would load it, re-evaluated on a few windows and compared with the model in memory; only then is it renamed
into place (and zipped, when asked). A failure or a cancel removes the scratch folder and any partial zip;
scratch left by a killed process is removed by the next export into the same folder (``remove_abandoned``).
Besides the weights, the folder holds ``squeezelab.json`` and a model card ``README.md`` (``core.export.card``).
"""

from __future__ import annotations

import os
import shutil
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
    move_into_place,
    os_error,
    remove_abandoned,
    scratch_path,
    zip_folder,
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
    if spec.format == "compressed-tensors" and quantized:
        return torch.float16  # the scales SqueezeLab stores are fp16; llm-compressor's checkpoints are 16-bit too
    return next(model.parameters()).dtype


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
    if spec.format == "hf":
        return write_hf(model, tokenizer, folder, dtype, spec.sparse, cancel)
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
) -> ExportResult:
    """Write ``model`` as ``spec`` says to ``out`` (default ``spec.path``), reload it, check it, move it into place.

    ``windows`` [n, seqlen] are evaluation windows (the first ``spec.check_windows`` are scored);
    ``recipe`` and ``metrics`` (a result row's fields) go into ``squeezelab.json`` and the model card.
    ``perplexity_before``: the model's perplexity on all of ``windows`` if the caller just measured it,
    so the check does not score the same windows twice.
    Raises SpecError (the model cannot be written in this format) or ExportError (the path) with nothing
    left behind; the model is not changed.
    """
    target, needed = _checked_target(model, tokenizer, spec, out)
    scratch, zip_scratch = scratch_path(target), scratch_path(target, ".zip")
    zip_path = target.with_name(target.name + ".zip") if spec.zip else None
    placed = False
    try:
        scratch.mkdir()
        result = _write_and_check(model, tokenizer, spec, windows, scratch, target, check_text, on_progress, cancel,
                                  perplexity_before)
        result.zip_path = str(zip_path) if zip_path else None
        write_metadata(scratch, result.as_dict(), recipe, metrics)
        result.size_bytes = folder_bytes(scratch)
        if zip_path is not None:
            report(on_progress, "export: zip", 0.0)
            result.zip_bytes = zip_folder(scratch, zip_scratch, target.name)
        move_into_place(scratch, target, spec.overwrite)
        placed = True
        if zip_path is not None:
            os.replace(zip_scratch, zip_path)
        report(on_progress, "export: done", 1.0)
        return result
    except OSError as exc:
        _clean(scratch, zip_scratch, target if placed else None)
        raise os_error(exc, target, needed) from exc
    except BaseException:
        _clean(scratch, zip_scratch, target if placed else None)
        raise


def _checked_target(model: nn.Module, tokenizer, spec: ExportSpec, out: str | Path | None) -> tuple[Path, int]:
    """(the folder to create, the bytes it may need) after every check that can fail before writing."""
    target = Path(out if out is not None else spec.path or "").expanduser()
    require(str(target) not in ("", "."), "an export needs a path: `export: {format: hf, path: out/model}`")
    precheck(model, tokenizer, spec)
    check_target(target, spec.overwrite)
    needed = int(measure_size(model).size_bytes * (2.1 if spec.zip else 1.1)) + 20_000_000
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


def _clean(scratch: Path, zip_scratch: Path, placed: Path | None) -> None:
    """All or nothing: remove the scratch folder, a partial zip, and a folder already moved in for a zip that failed."""
    shutil.rmtree(scratch, ignore_errors=True)
    zip_scratch.unlink(missing_ok=True)
    if placed is not None:
        shutil.rmtree(placed, ignore_errors=True)
