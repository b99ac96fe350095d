"""The reload check: load the written artifact the way a user would and compare it with the model in memory.

Both sides are scored with the same exact math (every ``QuantLinear`` on its fp32 dequantize kernel) on
the first evaluation windows; a file that re-rounded weights (GGUF requantized) is compared with a copy
of the model holding those very weights.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.evaluate.quality import evaluate_quality
from core.export.hf import WriteReport
from core.export.spec import ExportSpec
from core.models.exported import reload_artifact
from core.models.loading import clone
from core.progress import CancelFn, ProgressFn, report
from core.quantize.qembedding import ScaledEmbedding, TiedQuantEmbedding
from core.quantize.qlinear import QuantLinear

_CHECK_TEXT = ("The quick brown fox jumps over the lazy dog. def main():\n    return [x ** 2 for x in range(10)]\n"
               "Numbers 1234567 and 3.14159, URLs https://example.org/a?b=c, and ümlauts, 東京, emoji 🙂.")


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
    reference = clone(model)
    dtype = next(reference.parameters()).dtype
    for name, value in tensors.items():
        module_name, attribute = name.rsplit(".", 1)
        module = reference.get_submodule(module_name)
        value = value.to(dtype)
        if isinstance(module, TiedQuantEmbedding):  # the embedding and the tied head both read these values
            embedding = ScaledEmbedding(value, module.padding_idx, module.embed_scale)
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


def verify(model: nn.Module, tokenizer, spec: ExportSpec, folder: Path, written: WriteReport, windows: torch.Tensor,
           check_text: str | None, on_progress: ProgressFn | None, cancel: CancelFn | None,
           known_before: float | None = None) -> dict[str, Any]:
    """Reload the artifact from ``folder`` and compare it with the model on the check windows.

    ``known_before`` is the model's perplexity on all of ``windows``, already measured: it stands for
    "before" when the check scores all of them and every layer already runs the exact (dequantize) math.
    """
    every_window = not spec.check_windows or spec.check_windows >= windows.shape[0]
    windows = windows[: spec.check_windows] if spec.check_windows else windows
    reuse_before = known_before is not None and every_window and next(_fast_kernels(model), None) is None
    dtype = next(model.parameters()).dtype
    report(on_progress, "export: reload", 0.0)
    started = time.perf_counter()
    gguf_file = written.details.get("gguf_file")
    kind = "gguf" if spec.format == "gguf" else "hf"
    reloaded, reloaded_tokenizer = reload_artifact(kind, folder / gguf_file if gguf_file else folder, dtype, "dequant")
    reload_s = time.perf_counter() - started
    with exact_kernels(model):
        before = known_before if reuse_before else evaluate_quality(
            model, windows, on_progress=_stage(on_progress, "export: check (before)"), cancel=cancel).perplexity
        reference = None
        if written.details.get("reference"):
            simulated = _reference_model(model, written.details["reference"])
            reference = evaluate_quality(simulated, windows, cancel=cancel).perplexity
            del simulated
    after = evaluate_quality(reloaded, windows, on_progress=_stage(on_progress, "export: check (after)"),
                             cancel=cancel).perplexity
    del reloaded
    tokens_match = _same_tokens(tokenizer, reloaded_tokenizer, check_text)
    expected = reference if reference is not None else before
    return {"perplexity_before": before, "perplexity_after": after, "reference_perplexity": reference,
            "tokenizer_match": tokens_match, "windows": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
            "reload_s": reload_s,
            "check_passed": bool(tokens_match and abs(after / expected - 1) <= spec.tolerance)}
