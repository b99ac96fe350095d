"""The recipe's ``prune:`` step: unstructured / N:M or structured pruning, then an optional masked fine-tune.

In a recipe::

    steps:
      - prune: {method: wanda, sparsity: 0.5, recovery_steps: 50, recovery_lr: 1e-4}
      - prune: {method: structured, target: heads, fraction: 0.25}
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from core.checks import is_count, is_number, require, require_mapping
from core.prune.apply import prune_
from core.prune.recovery import finetune_masked_
from core.prune.spec import METHODS, PruneSpec
from core.prune.structured.apply import prune_structured_
from core.prune.structured.spec import IMPORTANCES, StructuredSpec
from core.technique import StepContext

RECOVERY_KEYS = ("recovery_steps", "recovery_lr")


@dataclass(frozen=True)
class PruneStep:
    """A prune step: what to prune (``PruneSpec`` or, with ``method: structured``, ``StructuredSpec``), then
    optionally ``recovery_steps`` of fine-tuning with the zeros held fixed."""

    spec: PruneSpec | StructuredSpec
    recovery_steps: int = 0
    recovery_lr: float = 1e-4

    CLI_HELP: ClassVar[str] = "prune a model, then measure it (a one-step recipe)"
    CLI_CALIBRATION: ClassVar[bool] = True  # the command takes --calib-text / --calib-samples / --calib-seqlen

    def __post_init__(self) -> None:
        require(is_count(self.recovery_steps, 0),
                f"recovery_steps must be a whole number >= 0, got {self.recovery_steps!r}")
        require(is_number(self.recovery_lr) and 0 < self.recovery_lr < 1,
                f"recovery_lr must be a number in (0, 1), e.g. 1e-4; got {self.recovery_lr!r}")

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> PruneStep:
        """Build from a recipe's ``prune:`` mapping; the method decides which spec reads the rest."""
        require_mapping(params, "prune parameters", "{method: wanda, sparsity: 0.5}")
        recovery = {key: params[key] for key in RECOVERY_KEYS if key in params}
        rest = {key: value for key, value in params.items() if key not in RECOVERY_KEYS}
        structured = rest.get("method") == "structured"
        spec = StructuredSpec.from_dict(rest) if structured else PruneSpec.from_dict(rest)
        return cls(spec, **recovery)

    @staticmethod
    def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
        """The ``squeezelab prune`` options."""
        parser.add_argument("--method", default="magnitude", choices=[*METHODS, "structured"])
        parser.add_argument("--sparsity", type=float, default=None, help="share of weights zeroed, e.g. 0.5")
        parser.add_argument("--threshold", type=float, default=None, help="magnitude: zero every |w| below this")
        parser.add_argument("--pattern", default="unstructured", help="unstructured, or N:M such as 2:4")
        parser.add_argument("--scope", default="per-matrix", choices=["per-matrix", "global"], help="magnitude only")
        parser.add_argument("--target", default=None, choices=["mlp_channels", "heads", "layers"],
                            help="structured only")
        parser.add_argument("--fraction", type=float, default=None,
                            help="structured: share of channels/heads/layers removed")
        parser.add_argument("--importance", default=None, choices=list(IMPORTANCES),
                            help="structured: how units are ranked (default activation_norm, on the calibration "
                                 "text; weight_norm is known to collapse some models)")
        parser.add_argument("--include", nargs="*", default=None, help="module name patterns to prune (default: all)")
        parser.add_argument("--exclude", nargs="*", default=None, help="module name patterns to keep dense")
        parser.add_argument("--recovery-steps", type=int, default=0, help="masked fine-tuning steps afterwards")
        parser.add_argument("--owl", action="store_true",
                            help="wanda / sparsegpt: per-block sparsity from outlier shares (OWL, lambda 0.08, m 5)")

    @staticmethod
    def params_from_cli(args: argparse.Namespace) -> dict[str, Any]:
        """The recipe's ``prune:`` mapping for the given options (only what was set)."""
        if args.method == "structured":
            params = {"method": "structured", "target": args.target, "fraction": args.fraction,
                      "importance": getattr(args, "importance", None)}
        else:
            params = {"method": args.method, "sparsity": args.sparsity, "threshold": args.threshold,
                      "pattern": args.pattern, "scope": args.scope, "include": args.include, "exclude": args.exclude,
                      "owl": {} if args.owl else None}
        params["recovery_steps"] = args.recovery_steps
        defaults = {"pattern": "unstructured", "scope": "per-matrix", "recovery_steps": 0}
        return {key: value for key, value in params.items() if value is not None and defaults.get(key) != value}

    @property
    def needs_calibration(self) -> bool:
        return self.spec.needs_calibration or self.recovery_steps > 0

    @property
    def known_risk(self) -> str | None:
        """Why this step's setting is known to collapse a model (said before the run starts), or None."""
        return getattr(self.spec, "known_risk", None)

    @property
    def label(self) -> str:
        """Short description for charts and tables, e.g. 'wanda 50% 2:4 +50 ft'."""
        return self.spec.label + (f" +{self.recovery_steps} ft" if self.recovery_steps else "")

    def apply(self, model: nn.Module, ctx: StepContext) -> dict[str, Any]:
        """Prune ``model`` in place (it is the pipeline's own copy); returns the step's report."""
        started = time.perf_counter()
        if self.known_risk:
            ctx.notes.append(self.known_risk)
        calibration = ctx.calibration if self.spec.needs_calibration else None
        prune = prune_structured_ if isinstance(self.spec, StructuredSpec) else prune_
        report = prune(model, self.spec, calibration, ctx.on_progress, ctx.cancel).as_dict()
        if self.recovery_steps:
            losses = finetune_masked_(model, ctx.calibration, self.recovery_steps, self.recovery_lr,
                                      on_progress=ctx.on_progress, cancel=ctx.cancel)
            report["recovery_losses"] = losses
            if len(losses) < self.recovery_steps:
                ctx.notes.append(f"recovery fine-tune cancelled after {len(losses)} of {self.recovery_steps} steps; "
                                 "the model keeps the steps done")
        model.eval()
        label = self.label
        if isinstance(self.spec, StructuredSpec):  # counts are rounded: say what was really removed
            removed = 1 - report["params_after"] / report["params_before"]
            ft = f" +{self.recovery_steps} ft" if self.recovery_steps else ""
            label = f"{self.spec.label} (-{removed:.1%} params){ft}"
        report.update(kind="prune", label=label, step_wall_s=time.perf_counter() - started)
        return report
