"""What every compression technique offers a recipe, and what a recipe step may use.

A technique is one package under ``core/`` (``prune``, ``quantize``, ``distill``, ...) whose
``step.py`` defines one class implementing ``StepSpec``; ``core.recipe.steps.STEPS`` maps the
recipe's step kind (``prune:``, ``quantize:``, ...) to that class. The CLI, recipes and the app
find techniques there and nowhere else.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from core import data
from core.progress import CancelFn, ProgressFn


@dataclass
class StepContext:
    """What a step may use besides the model: tokenizer, calibration settings, progress and cancel."""

    tokenizer: Any
    default_text: str
    calibration_text: str = "default"
    samples: int = 128
    seqlen: int = 512
    seed: int = 0
    on_progress: ProgressFn | None = None
    cancel: CancelFn | None = None
    notes: list[str] = field(default_factory=list)
    teacher: nn.Module | None = None  # the recipe's base model, untouched by every step (read-only)
    on_step: Callable[[dict[str, Any]], None] | None = None  # per-step training records (distill)
    handed_over: nn.Module | None = None  # a step that trained another model than the one it was given
    # how another model a step loads (a teacher or student reference) may be loaded: the recipe's opt-ins
    load_options: dict[str, bool] = field(default_factory=dict)

    def take_model(self, current: nn.Module) -> nn.Module:
        """The model the next step works on: the one a step handed over, else ``current``."""
        model = self.handed_over if self.handed_over is not None else current
        self.handed_over = None
        return model

    @cached_property
    def calibration(self) -> torch.Tensor:
        """``samples`` random windows of ``seqlen`` tokens of the calibration text (tokenized once)."""
        text = data.load_text(self.calibration_text, default=self.default_text)
        ids = data.tokenize(self.tokenizer, text.text)
        return data.calibration_batches(ids, self.samples, self.seqlen, self.seed, bos=data.added_bos(self.tokenizer))


class StepSpec(Protocol):
    """The surface every technique's step class offers (a frozen dataclass, validated on creation)."""

    CLI_HELP: ClassVar[str]  # the help line of ``squeezelab <kind>``
    CLI_CALIBRATION: ClassVar[bool]  # whether ``squeezelab <kind>`` takes the calibration options

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> StepSpec:
        """Build from the step's recipe mapping; unknown keys and bad values raise ``SpecError``."""

    @property
    def needs_calibration(self) -> bool:
        """Whether ``apply`` reads ``ctx.calibration``."""

    @property
    def label(self) -> str:
        """A short description for tables and charts, e.g. 'wanda 50% 2:4'; different settings, different labels."""

    def apply(self, model: nn.Module, ctx: StepContext) -> dict[str, Any]:
        """Change ``model`` in place (the pipeline's own copy) and return the step's report (plain data)."""

    @staticmethod
    def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the step's own options to ``squeezelab <kind>``."""

    @staticmethod
    def params_from_cli(args: argparse.Namespace) -> dict[str, Any]:
        """The step's recipe mapping for the parsed options (only what the user set)."""
