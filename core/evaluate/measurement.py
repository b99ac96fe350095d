"""One evaluation of a loaded model as a recipe asks for it: quality, size and (optionally) latency.

Every perplexity leaves here with its 95% interval over the windows (``core.evaluate.intervals``),
and, when a base model was scored on the same windows, the base's interval and the paired comparison.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

import torch
import transformers

from core import data
from core.evaluate.latency import LatencyMetrics, measure_latency
from core.evaluate.quality import QualityMetrics, evaluate_quality, unigram_perplexity
from core.evaluate.size import SizeMetrics, measure_size
from core.evaluate.spec import EvalSpec
from core.models.source import LoadedModel
from core.progress import CancelFn, ProgressFn, report
from core.quantize.kernel_choice import kernel_summary


@dataclass
class Measurement:
    """Everything one evaluation measured, ready to become result-row fields."""

    quality: QualityMetrics
    size: SizeMetrics
    latency: LatencyMetrics | None
    text: str
    windows: torch.Tensor | None = None  # the evaluation windows [n, seqlen] (an export re-scores some of them)
    bos: int | None = None  # the token every window starts with (the tokenizer adds it), or None
    unigram_perplexity: float | None = None  # of the scored tokens' own frequencies: a context-free baseline

    def row_fields(self) -> dict:
        latency = self.latency
        interval = self.quality.interval()
        return {
            "perplexity": self.quality.perplexity,
            "perplexity_ci_low": interval.low,
            "perplexity_ci_high": interval.high,
            "top1_acc": self.quality.top1_acc,
            "top1_agreement": self.quality.top1_agreement,
            "kl_to_base": self.quality.kl_to_base,
            "params": self.size.params,
            "nonzero_params": self.size.nonzero_params,
            "size_bytes": self.size.size_bytes,
            "bits_per_weight": self.size.bits_per_weight,
            "prefill_ms": latency.prefill_ms if latency else None,
            "decode_tok_s": latency.decode_tok_s if latency else None,
            "peak_mem_bytes": latency.peak_mem_bytes if latency else None,
        }

    def details(self) -> dict:
        return {
            "text": self.text,
            "seqlen": self.quality.seqlen,
            "windows": self.quality.windows,
            "tokens_scored": self.quality.tokens_scored,
            "bos_first": self.bos is not None,
            "protocol": window_protocol(self.quality.windows, self.quality.seqlen, self.bos),
            "unigram_perplexity": self.unigram_perplexity,
            "warnings": plausibility_warnings(self.quality.perplexity, self.unigram_perplexity, self.bos),
            **self.uncertainty(),
            "latency": self.latency.as_dict() if self.latency else None,
            "threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformers": transformers.__version__},
        }


    def uncertainty(self) -> dict:
        """The intervals (``details`` keys): the perplexity's, the base's and the paired one against the base.

        ``window_nll`` / ``window_tokens`` (each window's mean NLL and its tokens) let two stored results
        measured on the same windows be compared pairwise later.
        """
        quality = self.quality
        base_interval, vs_base = quality.base_interval(), quality.vs_base()
        tokens = quality.window_tokens
        return {
            "perplexity_interval": quality.interval().as_dict(),
            "base_perplexity_interval": base_interval.as_dict() if base_interval else None,
            "vs_base": vs_base.as_dict() if vs_base else None,
            "window_nll": [round(nll / count, 6) for nll, count in zip(quality.window_nll, tokens, strict=True)],
            "window_tokens": list(tokens),
        }


def eval_windows(loaded: LoadedModel, spec: EvalSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(all token ids of the evaluation text, the windows scored) for a model and spec: each window starts
    with the tokenizer's BOS when it adds one (``data.windows``)."""
    text = data.load_text(spec.text, default=loaded.source.default_text)
    ids = data.tokenize(loaded.tokenizer, text.text)
    bos = data.added_bos(loaded.tokenizer)
    return ids, data.windows(ids, spec.resolved_seqlen(loaded.context_length), spec.max_windows, bos=bos)


def window_protocol(windows: int, seqlen: int, bos: int | None) -> str:
    """How the windows were scored, in words (a result names its protocol)."""
    if bos is None:
        return (f"{windows} non-overlapping windows of {seqlen} text tokens, {seqlen - 1} scored each "
                "(the tokenizer adds no BOS)")
    return (f"{windows} non-overlapping windows of <bos> + {seqlen - 1} text tokens, all {seqlen - 1} scored "
            "(the tokenizer adds a BOS, as in training)")


def plausibility_warnings(perplexity: float, unigram: float | None, bos: int | None) -> list[str]:
    """A warning when the perplexity is above the text's unigram perplexity: a model that ignored every token of
    context and only knew the text's token frequencies would score better, which no working model does."""
    if unigram is None or perplexity <= unigram:  # a NaN perplexity fails the comparison: warned too
        return []
    bos_cause = ("" if bos is not None else
                 "a model that needs a BOS token first that its tokenizer does not add (set the tokenizer's "
                 "add_bos_token), ")
    return [f"perplexity {perplexity:,.2f} is above {unigram:,.2f}, the perplexity of this text's own token "
            "frequencies (what a model ignoring all context would score): implausible for a working model. Likely "
            f"causes: {bos_cause}weights damaged by a compression step (an embedding's scale lost, a scale folded "
            "into the wrong norm), a tokenizer that is not the model's, a dtype that overflows (float16 on a "
            "bfloat16-trained model), or a text far from the model's training"]


def measure(
    model: torch.nn.Module,
    loaded: LoadedModel,
    spec: EvalSpec,
    base: torch.nn.Module | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> Measurement:
    """Quality on the spec's windows (agreement with ``base`` if given), size, and latency (paired with ``base``)."""
    ids, windows = eval_windows(loaded, spec)
    bos = data.added_bos(loaded.tokenizer)
    quality = evaluate_quality(model, windows, base=base, on_progress=on_progress, cancel=cancel)
    latency = None
    if spec.latency:
        report(on_progress, "latency", 0.0)
        prompt_tokens, new_tokens = fit_to_context(spec.prompt_tokens, spec.new_tokens, loaded.context_length)
        prompt_tokens = min(prompt_tokens, ids.numel())
        # the base (when comparing) is timed in the same runs, in turns with the model: a paired speed ratio
        latency = measure_latency(model, ids[:prompt_tokens], new_tokens, runs=spec.latency_runs, cancel=cancel,
                                  base=base, compile=spec.compile)
    unigram = unigram_perplexity(ids, windows, max(len(loaded.tokenizer), int(ids.max()) + 1))
    return Measurement(quality, measure_size(model), latency, spec.text, windows, bos, unigram)


def fit_to_context(prompt_tokens: int, new_tokens: int, context_length: int) -> tuple[int, int]:
    """Shrink the latency prompt / generation so both fit the model's context (half each at worst)."""
    if prompt_tokens + new_tokens <= context_length:
        return prompt_tokens, new_tokens
    prompt = min(prompt_tokens, max(1, context_length // 2))
    return prompt, max(1, min(new_tokens, context_length - prompt))


def kernel_label(model: torch.nn.Module, size: SizeMetrics) -> str:
    """What runs the matmuls, e.g. 'dense float32 (torch cpu)' or 'dense float32 with zeros (torch cpu)'.

    A quantized model names the kernels of its quantized layers, e.g. '4-bit int4_weight_only x210 (torch cpu)'.
    """
    quantized = kernel_summary(model)
    if quantized is not None:
        return quantized
    parameter = next(model.parameters())
    zeros = " with zeros" if size.nonzero_params < 0.99 * size.params else ""
    return f"dense {str(parameter.dtype).replace('torch.', '')}{zeros} (torch {parameter.device.type})"
