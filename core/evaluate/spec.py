"""``EvalSpec``: how a model is measured (a recipe's ``evaluation:`` section).

In a recipe::

    evaluation: {text: default, seqlen: 512, max_windows: 64, latency: true}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.checks import is_count, require

if TYPE_CHECKING:
    from core.models.device import ModelDims

# The row reports the median and spread of the runs; they settle within a few dozen, so more only holds
# the machine (each run is a whole prefill and generation).
MAX_LATENCY_RUNS = 1000


@dataclass(frozen=True)
class EvalSpec:
    """How a model is measured; every figure is reported beside these settings."""

    text: str = "default"
    seqlen: int | None = None  # None: 512, or the model's context length when that is shorter
    max_windows: int | None = 64  # None: every window of the text
    latency: bool = True  # also measure prefill / decode speed and peak memory
    compare_to_base: bool = True  # after steps: base perplexity, top-1 agreement, KL (a second forward pass)
    prompt_tokens: int = 128
    new_tokens: int = 32
    latency_runs: int = 5
    # compile the decode step with torch.compile (None: when the model has >= 20 M parameters; see
    # core.evaluate.decode); compile time is reported apart from the speed
    compile: bool | None = None

    def __post_init__(self) -> None:
        require(isinstance(self.text, str), f"evaluation.text must be a text source name or path, got {self.text!r}")
        require(self.seqlen is None or is_count(self.seqlen, 2),
                f"evaluation.seqlen must be a whole number >= 2, got {self.seqlen!r}")
        require(self.max_windows is None or is_count(self.max_windows, 1),
                f"evaluation.max_windows must be a whole number >= 1 (or omitted for all), got {self.max_windows!r}")
        require(self.compile is None or isinstance(self.compile, bool),
                f"evaluation.compile must be true, false or omitted (auto), got {self.compile!r}")
        for name in ("latency", "compare_to_base"):
            require(isinstance(getattr(self, name), bool),
                    f"evaluation.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("prompt_tokens", "new_tokens", "latency_runs"):
            value = getattr(self, name)
            require(is_count(value, 1),
                    f"evaluation.{name} must be a whole number >= 1, got {value!r}")
        require(self.latency_runs <= MAX_LATENCY_RUNS,
                f"evaluation.latency_runs={self.latency_runs:,} is more than {MAX_LATENCY_RUNS}: speed is reported as "
                f"the median and spread of the runs, which settle within a few dozen; use at most {MAX_LATENCY_RUNS}")

    def resolved_seqlen(self, context_length: int) -> int:
        """The window length to use for a model with ``context_length`` positions."""
        if self.seqlen is None:
            return min(512, context_length)
        require(self.seqlen <= context_length,
                f"evaluation.seqlen={self.seqlen} is longer than the model's context ({context_length} tokens); "
                f"use at most {context_length}")
        return self.seqlen


def scoring_bytes(seqlen: int, dims: ModelDims, compare: bool, batch: int = 1) -> int:
    """Peak working bytes of scoring ``batch`` windows (``core.evaluate.quality``): the model's forward (a block's
    widest activations and attention scores) and its fp32 logits [seqlen, vocab] with their log-softmax; with a
    base model to compare with, its logits too and the KL terms (about eight logits-sized tensors in all)."""
    logits = seqlen * dims.vocab * 4 * (8 if compare else 3)
    forward = seqlen * (4 * dims.widest + dims.heads * seqlen) * dims.element_bytes
    return batch * (logits + forward)


def decode_bytes(tokens: int, dims: ModelDims) -> int:
    """Working bytes of timing a prompt plus generation of ``tokens`` in all: the KV cache (keys and values of
    every block, at most one per head) and the prefill's forward."""
    cache = 2 * dims.layers * dims.heads * dims.head_dim * tokens * dims.element_bytes
    return cache + tokens * (4 * dims.widest + dims.heads * tokens + dims.vocab) * dims.element_bytes
