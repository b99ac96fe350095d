"""``CalibrationSpec``: the text data-aware methods learn from (a recipe's ``calibration:`` section).

In a recipe::

    calibration: {text: default, samples: 128, seqlen: 512, seed: 0}

How many samples fit is decided before any work (``core.recipe.preflight``): the windows may not ask for more
tokens than the text holds, and what the block-by-block walk keeps per sample (``walk_bytes_per_sample``)
must fit in free memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.checks import is_count, require

if TYPE_CHECKING:
    from core.models.device import ModelDims

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes at most a 64-bit seed


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration text for data-aware methods: ``samples`` random windows of ``seqlen`` tokens."""

    text: str = "default"
    samples: int = 128
    seqlen: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        require(is_count(self.samples, 1),
                f"calibration.samples must be a whole number >= 1, got {self.samples!r}")
        require(is_count(self.seqlen, 2),
                f"calibration.seqlen must be a whole number >= 2, got {self.seqlen!r}")
        require(is_count(self.seed, 0) and self.seed <= MAX_SEED,
                f"calibration.seed must be a whole number from 0 to 2^64 - 1, got {self.seed!r}")


def walk_bytes_per_sample(seqlen: int, dims: ModelDims) -> int:
    """Bytes the block-by-block walk (``core.calibration.walk``) holds for one calibration sample.

    Per token: the token and position ids (int64), the hidden states entering the current block and those
    leaving it (both alive while the block is re-run), and the rotary tables every block receives
    (2 x head_dim); with eager attention also the sample's [seqlen, seqlen] causal mask.
    """
    per_token = 16 + (2 * dims.hidden + 2 * dims.head_dim) * dims.element_bytes
    mask = seqlen * seqlen * dims.element_bytes if dims.eager_attention else 0
    return seqlen * per_token + mask


def walk_fixed_bytes(seqlen: int, dims: ModelDims) -> int:
    """Bytes the walk needs whatever the sample count: one block's fp32 X^T X statistics (the inputs of the
    attention and MLP projections: hidden and the widest inner width) and one sample's forward."""
    hessians = 4 * (2 * dims.hidden**2 + dims.widest**2)
    return hessians + forward_bytes(seqlen, dims)


def forward_bytes(seqlen: int, dims: ModelDims) -> int:
    """Transient bytes of one window's forward without gradients: a block's widest activations and one block's
    attention scores, [heads, seqlen, seqlen]."""
    return seqlen * (4 * dims.widest + dims.heads * seqlen) * dims.element_bytes
