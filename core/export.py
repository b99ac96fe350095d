"""Export a compressed model in a format other tools load, and prove that it loads.

Formats (``ExportSpec.format``):

* ``hf``                 - a transformers folder (safetensors, tokenizer, generation config). Dense models load
                           with ``AutoModelForCausalLM.from_pretrained``; quantized or sparse ones keep SqueezeLab's
                           stored form and load with ``load_exported`` (``core.export_hf``).
* ``compressed-tensors`` - llm-compressor's format, loaded by transformers and vLLM (``core.export_ct``).
* ``gguf``               - one ``.gguf`` file for llama.cpp / ollama, Llama-family models (``core.export_gguf``).

Every export is written into a hidden scratch folder beside the target, reloaded from there the way a user
would load it, re-evaluated on a few windows and compared with the model in memory; only then is it renamed
into place (and zipped, when asked). A failure or a cancel removes the scratch folder and any partial zip;
scratch left by a killed process is removed by the next export into the same folder (``remove_abandoned``).
Besides the weights, the folder holds ``squeezelab.json`` and a model card ``README.md`` (``core.export_card``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core import evaluate, models
from core.errors import SpecError
from core.export_card import write_metadata
from core.export_files import (
    check_free_space,
    check_target,
    folder_bytes,
    move_into_place,
    os_error,
    remove_abandoned,
    scratch_path,
    zip_folder,
)
from core.export_gguf import GGUF_TYPES
from core.export_hf import WriteReport, is_squeezelab_folder
from core.qembedding import TiedQuantEmbedding
from core.qlinear import QuantLinear

FORMATS = ("hf", "compressed-tensors", "gguf")
DTYPES = ("auto", "fp32", "fp16", "bf16")
WEIGHT_SUFFIXES = (".safetensors", ".gguf")
_CHECK_TEXT = ("The quick brown fox jumps over the lazy dog. def main():\n    return [x ** 2 for x in range(10)]\n"
               "Numbers 1234567 and 3.14159, URLs https://example.org/a?b=c, and ümlauts, 東京, emoji 🙂.")


@dataclass(frozen=True)
class ExportSpec:
    """Where and how to export; a recipe's ``export:`` mapping, e.g. ``{format: gguf, path: out/, gguf_type: Q4_0}``."""

    format: str = "hf"
    path: str | None = None  # the folder to create (None: the result's artifact folder in the store)
    gguf_type: str = "auto"  # gguf: auto | F32 | F16 | Q8_0 | Q4_0 | Q4_1 (auto: the exact type of each layer)
    requantize: bool = False  # gguf: re-round layers the requested type cannot hold exactly (lossy)
    sparse: bool | None = None  # hf: pruned weights as bitmask + values; None: where that is smaller
    dtype: str = "auto"  # hf / compressed-tensors: dtype of float tensors (auto: the model's; ct: fp16 if quantized)
    zip: bool = False  # also write <path>.zip (streamed from disk by the app's download button)
    overwrite: bool = False  # replace an existing folder at path
    check_windows: int = 8  # evaluation windows scored before export and after reload (0: all)
    tolerance: float = 0.005  # relative perplexity difference the check accepts

    def __post_init__(self) -> None:
        _require(self.format in FORMATS, f"unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}")
        _require(self.path is None or (isinstance(self.path, str) and self.path.strip() != ""),
                 f"export path must be a folder path, got {self.path!r}")
        _require(self.gguf_type in GGUF_TYPES, f"unknown gguf_type {self.gguf_type!r}; choose one of "
                                               f"{', '.join(GGUF_TYPES)}")
        _require(self.format == "gguf" or (self.gguf_type == "auto" and not self.requantize),
                 "gguf_type and requantize apply to format gguf only")
        _require(self.dtype in DTYPES, f"unknown export dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        _require(self.format != "gguf" or self.dtype == "auto", "format gguf takes gguf_type (F32, F16, Q8_0, ...), "
                                                                "not dtype")
        _require(self.sparse in (None, True, False), f"sparse must be auto, true or false, got {self.sparse!r}")
        _require(self.format == "hf" or not self.sparse,
                 "sparse storage exists in format hf only (compressed-tensors dropped sparse formats; GGUF has none)")
        for name in ("requantize", "zip", "overwrite"):
            _require(isinstance(getattr(self, name), bool), f"export {name} must be true or false")
        _require(isinstance(self.check_windows, int) and not isinstance(self.check_windows, bool)
                 and self.check_windows >= 0, f"check_windows must be a whole number >= 0, got {self.check_windows!r}")
        _require(isinstance(self.tolerance, int | float) and 0 < self.tolerance < 1,
                 f"tolerance must be in (0, 1), e.g. 0.005 for 0.5%; got {self.tolerance!r}")

    @classmethod
    def from_dict(cls, raw: Any) -> ExportSpec:
        """Build from a recipe's ``export:`` mapping (``sparse: auto`` means None)."""
        _require(isinstance(raw, Mapping),
                 f"`export:` must be a mapping such as {{format: hf, path: out/}}, got {raw!r}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - allowed)
        _require(not unknown,
                 f"unknown key(s) in `export:` {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        values = dict(raw)
        if values.get("sparse") == "auto":
            values["sparse"] = None
        if values.get("path") is not None:
            values["path"] = str(values["path"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


@dataclass
class ExportResult:
    """What was written, how big it is on disk, and whether the reloaded artifact matched the model."""

    format: str
    path: str
    zip_path: str | None = None
    gguf_file: str | None = None
    squeezelab_format: bool = False  # hf folder in SqueezeLab's stored form (load with load_exported)
    size_bytes: int = 0  # every file of the folder
    weights_bytes: int = 0  # the .safetensors / .gguf files
    promised_bytes: int = 0  # what the stored schemes add up to (tensors only)
    zip_bytes: int | None = None
    check_passed: bool = False
    perplexity_before: float | None = None  # the model in memory (exact dequantized math) on the check windows
    perplexity_after: float | None = None  # the reloaded artifact on the same windows
    reference_perplexity: float | None = None  # what the file should hold, when the export re-rounded weights
    tokenizer_match: bool | None = None
    windows: int = 0
    seqlen: int = 0
    tolerance: float = 0.005
    export_s: float = 0.0
    reload_s: float = 0.0
    check_s: float = 0.0
    lossy: bool = False
    dtype: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- writing ----


def _export_dtype(spec: ExportSpec, model: nn.Module) -> torch.dtype:
    if spec.dtype != "auto":
        return models.DTYPES[spec.dtype]
    quantized = any(isinstance(m, QuantLinear) for m in model.modules())
    if spec.format == "compressed-tensors" and quantized:
        return torch.float16  # the scales SqueezeLab stores are fp16; llm-compressor's checkpoints are 16-bit too
    return next(model.parameters()).dtype


def precheck(model: nn.Module, tokenizer, spec: ExportSpec) -> None:
    """Raise SpecError (what cannot be written, and what can) before anything is written."""
    if spec.format == "compressed-tensors":
        from core.export_ct import check_ct

        check_ct(model)
    elif spec.format == "gguf":
        from core.export_gguf import plan
        from core.export_gguf_vocab import vocab_for

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
        from core.export_hf import write_hf

        return write_hf(model, tokenizer, folder, dtype, spec.sparse, cancel)
    if spec.format == "compressed-tensors":
        from core.export_ct import write_ct

        return write_ct(model, tokenizer, folder, dtype, cancel)
    from core.export_gguf import write_gguf

    return write_gguf(model, tokenizer, folder, spec.gguf_type, spec.requantize, cancel)


# ---- reloading: the call a user makes ----


def load_exported(path: str | Path, device: str | None = None, dtype: str | torch.dtype | None = None,
                  kernel: str | None = None) -> models.LoadedModel:
    """Load any SqueezeLab export back: an hf folder (SqueezeLab's stored form or plain), a compressed-tensors
    folder, or a GGUF file (or a folder holding one). ``kernel`` picks the QuantLinear kernel (default: auto)."""
    path = Path(path).expanduser()
    target = models.pick_device(device)
    torch_dtype = dtype if isinstance(dtype, torch.dtype) else models.DTYPES.get(dtype or "", None)
    gguf = path if path.suffix == ".gguf" else _only_gguf(path)
    if gguf is not None:
        model, tokenizer = _reload("gguf", gguf, torch_dtype or torch.float32, kernel)
        source = models.ModelSource(str(gguf), "gguf", str(gguf.parent), gguf.name)
    else:
        if not (path / "config.json").is_file():
            raise SpecError(f"{path} is neither an exported folder (config.json) nor a .gguf file")
        model, tokenizer = _reload("hf", path, torch_dtype, kernel)
        source = models.ModelSource(str(path), "folder", str(path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    model.to(target).eval()
    return models.LoadedModel(model, tokenizer, source, target, next(model.parameters()).dtype)


def _only_gguf(folder: Path) -> Path | None:
    """The .gguf file of an exported GGUF folder (one without config.json), else None."""
    if not folder.is_dir() or (folder / "config.json").exists():
        return None
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def _reload(kind: str, path: Path, dtype: torch.dtype | None, kernel: str | None) -> tuple[nn.Module, Any]:
    """(model, tokenizer) from a written artifact: ``path`` is a folder, or a .gguf file for kind gguf."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind == "gguf":
        from core.export_gguf import load_gguf

        return load_gguf(path, dtype or torch.float32)
    if is_squeezelab_folder(path):
        from core.export_hf import load_hf

        model = load_hf(path, dtype, kernel)
    else:  # plain or compressed-tensors: transformers itself (compressed-tensors decompresses on load)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto", use_safetensors=True).eval()
    return model, AutoTokenizer.from_pretrained(path)


# ---- the check ----


def _fast_kernels(model: nn.Module) -> Iterator[QuantLinear]:
    """The QuantLinear layers that do not run the exact fp32 dequantize math."""
    return (m for m in model.modules() if isinstance(m, QuantLinear) and m.kernel != "dequant")


@contextlib.contextmanager
def exact_kernels(model: nn.Module) -> Iterator[nn.Module]:
    """Run every QuantLinear with the dequantize kernel (fp32 math) inside the block, then restore each kernel.

    Fast kernels compute in bf16; comparing the file with the model needs the same exact math on both sides.
    """
    changed = [(m, m.kernel) for m in _fast_kernels(model)]
    for module, _ in changed:
        module.use_kernel("dequant")
    try:
        yield model
    finally:
        for module, kernel in changed:
            module.use_kernel(kernel)


def _reference_model(model: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding the re-rounded weights the file holds (HF names -> [out, in] values)."""
    reference = models.clone(model)
    dtype = next(reference.parameters()).dtype
    for name, value in tensors.items():
        module_name, attribute = name.rsplit(".", 1)
        module = reference.get_submodule(module_name)
        value = value.to(dtype)
        if isinstance(module, TiedQuantEmbedding):  # the embedding and the tied head both read these values
            embedding = nn.Embedding.from_pretrained(value, freeze=True, padding_idx=module.padding_idx)
            head = nn.Linear(value.shape[1], value.shape[0], bias=False)
            head.weight = embedding.weight
            reference.set_input_embeddings(embedding)
            reference.set_output_embeddings(head)
        elif isinstance(module, QuantLinear):
            dense = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, dtype=dtype)
            dense.weight.data.copy_(value)
            if module.bias is not None:
                dense.bias.data.copy_(module.bias)
            reference.set_submodule(module_name, dense)
        else:
            getattr(module, attribute).data.copy_(value.reshape(getattr(module, attribute).shape))
    return reference.eval()


def _same_tokens(original, reloaded, text: str | None) -> bool:
    sample = (text or _CHECK_TEXT)[:20000]
    return original(sample)["input_ids"] == reloaded(sample)["input_ids"]


def _stage(on_progress, name: str):
    if on_progress is None:
        return None
    return lambda _stage, fraction: on_progress(name, fraction)


def _verify(model: nn.Module, tokenizer, spec: ExportSpec, folder: Path, report: WriteReport, windows: torch.Tensor,
            check_text: str | None, on_progress, cancel, known_before: float | None = None) -> dict[str, Any]:
    """Reload the artifact from ``folder`` and compare it with the model on the check windows.

    ``known_before`` is the model's perplexity on all of ``windows``, already measured: it stands for
    "before" when the check scores all of them and every layer already runs the exact (dequantize) math.
    """
    every_window = not spec.check_windows or spec.check_windows >= windows.shape[0]
    windows = windows[: spec.check_windows] if spec.check_windows else windows
    reuse_before = known_before is not None and every_window and next(_fast_kernels(model), None) is None
    dtype = next(model.parameters()).dtype
    if on_progress:
        on_progress("export: reload", 0.0)
    started = time.perf_counter()
    gguf_file = report.details.get("gguf_file")
    kind = "gguf" if spec.format == "gguf" else "hf"
    reloaded, reloaded_tokenizer = _reload(kind, folder / gguf_file if gguf_file else folder, dtype, "dequant")
    reload_s = time.perf_counter() - started
    with exact_kernels(model):
        before = known_before if reuse_before else evaluate.evaluate_quality(
            model, windows, on_progress=_stage(on_progress, "export: check (before)"), cancel=cancel).perplexity
        reference = None
        if report.details.get("reference"):
            simulated = _reference_model(model, report.details["reference"])
            reference = evaluate.evaluate_quality(simulated, windows, cancel=cancel).perplexity
            del simulated
    after = evaluate.evaluate_quality(reloaded, windows, on_progress=_stage(on_progress, "export: check (after)"),
                                      cancel=cancel).perplexity
    del reloaded
    tokens_match = _same_tokens(tokenizer, reloaded_tokenizer, check_text)
    expected = reference if reference is not None else before
    return {"perplexity_before": before, "perplexity_after": after, "reference_perplexity": reference,
            "tokenizer_match": tokens_match, "windows": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
            "reload_s": reload_s,
            "check_passed": bool(tokens_match and abs(after / expected - 1) <= spec.tolerance)}


# ---- the entry point ----


def export_model(
    model: nn.Module,
    tokenizer,
    spec: ExportSpec,
    windows: torch.Tensor,
    out: str | Path | None = None,
    recipe: dict | None = None,
    metrics: dict | None = None,
    check_text: str | None = None,
    on_progress: Callable[[str, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
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
    target = Path(out if out is not None else spec.path or "").expanduser()
    _require(str(target) not in ("", "."), "an export needs a path: `export: {format: hf, path: out/model}`")
    precheck(model, tokenizer, spec)
    check_target(target, spec.overwrite)
    needed = int(evaluate.measure_size(model).size_bytes * (2.1 if spec.zip else 1.1)) + 20_000_000
    check_free_space(target, needed)
    remove_abandoned(target.parent)
    scratch, zip_scratch = scratch_path(target), scratch_path(target, ".zip")
    zip_path = target.with_name(target.name + ".zip") if spec.zip else None
    placed = False
    try:
        scratch.mkdir()
        if on_progress:
            on_progress("export: write", 0.0)
        started = time.perf_counter()
        report = _write(model, tokenizer, spec, scratch, cancel)
        export_s = time.perf_counter() - started
        check = _verify(model, tokenizer, spec, scratch, report, windows, check_text, on_progress, cancel,
                        perplexity_before)
        result = ExportResult(
            format=spec.format, path=str(target), zip_path=str(zip_path) if zip_path else None,
            gguf_file=report.details.get("gguf_file"), squeezelab_format=is_squeezelab_folder(scratch),
            weights_bytes=sum(p.stat().st_size for p in scratch.iterdir() if p.suffix in WEIGHT_SUFFIXES),
            promised_bytes=report.promised_bytes, tolerance=spec.tolerance, export_s=export_s, lossy=report.lossy,
            dtype=str(_export_dtype(spec, model)).replace("torch.", "") if spec.format != "gguf" else None,
            notes=report.notes, **{k: v for k, v in check.items() if k != "reload_s"}, reload_s=check["reload_s"])
        write_metadata(scratch, result.as_dict(), recipe, metrics)
        result.size_bytes = folder_bytes(scratch)
        if zip_path is not None:
            if on_progress:
                on_progress("export: zip", 0.0)
            result.zip_bytes = zip_folder(scratch, zip_scratch, target.name)
        move_into_place(scratch, target, spec.overwrite)
        placed = True
        if zip_path is not None:
            os.replace(zip_scratch, zip_path)
        if on_progress:
            on_progress("export: done", 1.0)
        return result
    except OSError as exc:
        _clean(scratch, zip_scratch, target if placed else None)
        raise os_error(exc, target, needed) from exc
    except BaseException:
        _clean(scratch, zip_scratch, target if placed else None)
        raise


def _clean(scratch: Path, zip_scratch: Path, placed: Path | None) -> None:
    """All or nothing: remove the scratch folder, a partial zip, and a folder already moved in for a zip that failed."""
    shutil.rmtree(scratch, ignore_errors=True)
    zip_scratch.unlink(missing_ok=True)
    if placed is not None:
        shutil.rmtree(placed, ignore_errors=True)
