"""Recipe steps: turn a step's parameters into a validated spec, and apply it to a model copy.

A ``prune`` step takes the parameters of ``core.prune.PruneSpec`` (magnitude / wanda / sparsegpt)
or, with ``method: structured``, of ``core.structured.StructuredSpec``; either may add
``recovery_steps`` / ``recovery_lr`` for a short fine-tune afterwards with the zeros held fixed.
A ``distill`` step takes the parameters of ``core.distill.DistillSpec``; its teacher is the recipe's
base model (``ctx.teacher``) unless it names another, and a model-reference student replaces the
model for the steps after it (``ctx.take_model``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from core import data
from core.distill import DistillSpec
from core.distill import run_step as run_distill
from core.errors import SpecError
from core.evaluate import CancelFn, ProgressFn
from core.prune import PruneSpec, prune_
from core.quantize import QuantizeSpec, quantize_
from core.recovery import finetune_masked_
from core.structured import StructuredSpec, prune_structured_

RECOVERY_KEYS = ("recovery_steps", "recovery_lr")


@dataclass(frozen=True)
class PruneStep:
    """A prune step: what to prune, then optionally ``recovery_steps`` of masked fine-tuning."""

    spec: PruneSpec | StructuredSpec
    recovery_steps: int = 0
    recovery_lr: float = 1e-4

    def __post_init__(self) -> None:
        if isinstance(self.recovery_steps, bool) or not isinstance(self.recovery_steps, int) or self.recovery_steps < 0:
            raise SpecError(f"recovery_steps must be a whole number >= 0, got {self.recovery_steps!r}")
        if not isinstance(self.recovery_lr, (int, float)) or not 0 < self.recovery_lr < 1:
            raise SpecError(f"recovery_lr must be a number in (0, 1), e.g. 1e-4; got {self.recovery_lr!r}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PruneStep:
        recovery = {key: params[key] for key in RECOVERY_KEYS if key in params}
        rest = {key: value for key, value in params.items() if key not in RECOVERY_KEYS}
        structured = rest.get("method") == "structured"
        spec = StructuredSpec.from_dict(rest) if structured else PruneSpec.from_dict(rest)
        return cls(spec, **recovery)

    @property
    def needs_calibration(self) -> bool:
        if isinstance(self.spec, StructuredSpec):
            return self.spec.importance == "activation_norm" or (self.spec.target == "layers" and not self.spec.layers)
        return self.spec.method != "magnitude" or self.recovery_steps > 0

    @property
    def label(self) -> str:
        """Short description for charts and tables, e.g. 'wanda 50% 2:4'."""
        spec = self.spec
        if isinstance(spec, StructuredSpec):
            amount = f"{spec.fraction:.0%}" if spec.fraction is not None else f"layers {list(spec.layers or [])}"
            return f"structured {spec.target} {amount}"
        amount = f"t={spec.threshold:g}" if spec.threshold is not None else f"{spec.sparsity or 0:.0%}"
        pattern = "" if spec.pattern == "unstructured" else f" {spec.pattern}"
        return f"{spec.method} {amount}{pattern}" + (f" +{self.recovery_steps} ft" if self.recovery_steps else "")


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
        return data.calibration_batches(ids, self.samples, self.seqlen, self.seed)


PARSERS: dict[str, Callable[[dict[str, Any]], Any]] = {"prune": PruneStep.from_params,
                                                        "quantize": QuantizeSpec.from_dict,
                                                        "distill": DistillSpec.from_dict}


def parse_step(kind: str, params: dict[str, Any]) -> Any:
    """The validated step object for a recipe step (raises SpecError with what is allowed)."""
    if kind not in PARSERS:
        raise SpecError(f"the {kind!r} step is not available in this version of SqueezeLab "
                        f"(available: {', '.join(PARSERS)})")
    return PARSERS[kind](params)


def apply_prune(model: nn.Module, step: PruneStep, ctx: StepContext) -> dict[str, Any]:
    """Prune ``model`` in place (it is the pipeline's own copy); returns the step's report."""
    started = time.perf_counter()
    calibration = ctx.calibration if step.needs_calibration else None
    if isinstance(step.spec, StructuredSpec):
        report = prune_structured_(model, step.spec, calibration, ctx.on_progress, ctx.cancel).as_dict()
    else:
        report = prune_(model, step.spec, calibration, ctx.on_progress, ctx.cancel).as_dict()
    if step.recovery_steps:
        losses = finetune_masked_(model, ctx.calibration, step.recovery_steps, step.recovery_lr,
                                  on_progress=ctx.on_progress, cancel=ctx.cancel)
        report["recovery_losses"] = losses
    model.eval()
    label = step.label
    if isinstance(step.spec, StructuredSpec):  # counts are rounded: say what was really removed
        removed = 1 - report["params_after"] / report["params_before"]
        label = f"structured {step.spec.target} -{removed:.1%} params"
    report.update(kind="prune", label=label, step_wall_s=time.perf_counter() - started)
    return report


def apply_distill(model: nn.Module, spec: DistillSpec, ctx: StepContext) -> dict[str, Any]:
    """Distil into ``model`` in place, or into a loaded student that ``ctx.take_model`` hands on."""
    started = time.perf_counter()
    student, report = run_distill(model, spec, ctx.teacher, ctx.tokenizer, ctx.default_text,
                                  on_progress=ctx.on_progress, cancel=ctx.cancel, on_step=ctx.on_step)
    if student is not model:
        ctx.handed_over = student
    student.eval()
    report["step_wall_s"] = time.perf_counter() - started
    return report


def quantize_label(spec: QuantizeSpec) -> str:
    """Short description for charts and tables, e.g. 'gptq w4 g64 asym' or 'int8 dynamic'."""
    if spec.method in ("fp16", "bf16"):
        return spec.method
    if spec.method == "int8_dynamic":
        return "int8 dynamic (w8a8 per-token)" + (" gptq" if spec.rounding == "gptq" else "")
    group = f"g{spec.group_size}" if spec.group_size else "per-channel"
    mixed = f" +{len(spec.overrides)} overrides" if spec.overrides else ""
    return f"{spec.method} w{spec.bits} {group} {'sym' if spec.symmetric else 'asym'}{mixed}"


def apply_quantize(model: nn.Module, spec: QuantizeSpec, ctx: StepContext) -> dict[str, Any]:
    """Quantize ``model`` in place (the pipeline's own copy); returns the step's report."""
    started = time.perf_counter()
    calibration = ctx.calibration if spec.uses_calibration else None
    report = quantize_(model, spec, calibration, ctx.on_progress, ctx.cancel).as_dict()
    ctx.notes.extend(report["notes"][:5])
    if len(report["notes"]) > 5:
        ctx.notes.append(f"... and {len(report['notes']) - 5} more kernel fallbacks (see the step report)")
    model.eval()
    report.update(kind="quantize", label=quantize_label(spec), step_wall_s=time.perf_counter() - started)
    return report


APPLIERS: dict[type, Callable[[nn.Module, Any, StepContext], dict[str, Any]]] = {PruneStep: apply_prune,
                                                                                 QuantizeSpec: apply_quantize,
                                                                                 DistillSpec: apply_distill}


def apply_step(model: nn.Module, step: Any, ctx: StepContext) -> dict[str, Any]:
    """Apply one parsed step to ``model`` in place and return its report."""
    return APPLIERS[type(step)](model, step, ctx)
