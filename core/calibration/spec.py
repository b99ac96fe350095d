"""``CalibrationSpec``: the text data-aware methods learn from (a recipe's ``calibration:`` section).

In a recipe::

    calibration: {text: default, samples: 128, seqlen: 512, seed: 0}
"""

from __future__ import annotations

from dataclasses import dataclass

from core.checks import is_count, require


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
        require(is_count(self.seed, 0), f"calibration.seed must be a whole number, got {self.seed!r}")
