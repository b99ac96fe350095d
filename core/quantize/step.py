"""The recipe's ``quantize:`` step: a ``QuantizeSpec`` that applies itself to the pipeline's model copy."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from core.quantize.apply import quantize_
from core.quantize.kernels import KERNELS
from core.quantize.spec import METHODS, QuantizeSpec
from core.technique import StepContext

MAX_NOTES = 5  # kernel fallbacks shown in the result's notes; the rest stay in the step report


@dataclass(frozen=True)
class QuantizeStep(QuantizeSpec):
    """``quantize:`` in a recipe (see ``QuantizeSpec`` for the parameters)."""

    CLI_HELP: ClassVar[str] = "quantize a model's weights, then measure it (a one-step recipe)"
    CLI_CALIBRATION: ClassVar[bool] = True

    @staticmethod
    def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
        """The ``squeezelab quantize`` options."""
        parser.add_argument("--method", default="rtn", choices=list(METHODS))
        parser.add_argument("--bits", type=int, default=4, help="2 to 8")
        parser.add_argument("--group-size", type=int, default=0,
                            help="input columns per scale (0: one per output channel)")
        parser.add_argument("--asymmetric", action="store_true", help="a zero point per group (default: symmetric)")
        parser.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                            help="gptq: columns by decreasing Hessian diagonal (default: on)")
        parser.add_argument("--kernel", default="auto", help=f"auto | {' | '.join(KERNELS)}")
        parser.add_argument("--lm-head", action="store_true", help="also quantize lm_head (RTN)")
        parser.add_argument("--rounding", choices=["rtn", "gptq"], default="rtn",
                            help="awq and int8_dynamic: how the weights are rounded")
        parser.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                            help="int8_dynamic: SmoothQuant strength in [0, 1) (default 0.5 with calibration text; "
                                 "0: off)")
        parser.add_argument("--include", nargs="*", default=None,
                            help="module name patterns to quantize (default: all)")
        parser.add_argument("--exclude", nargs="*", default=None, help="module name patterns to keep as they are")

    @staticmethod
    def params_from_cli(args: argparse.Namespace) -> dict[str, Any]:
        """The recipe's ``quantize:`` mapping for the given options (only what differs from the defaults)."""
        params = {"method": args.method, "bits": args.bits, "group_size": args.group_size or None,
                  "symmetric": not args.asymmetric, "act_order": args.act_order, "kernel": args.kernel,
                  "lm_head": args.lm_head, "include": args.include, "exclude": args.exclude,
                  "rounding": args.rounding, "smooth": getattr(args, "smooth", None)}
        defaults = {"group_size": None, "symmetric": True, "act_order": True, "kernel": "auto", "lm_head": False,
                    "rounding": "rtn"}
        return {key: value for key, value in params.items()
                if value is not None and (key not in defaults or defaults[key] != value)}

    def apply(self, model: nn.Module, ctx: StepContext) -> dict[str, Any]:
        """Quantize ``model`` in place (the pipeline's own copy); returns the step's report."""
        started = time.perf_counter()
        calibration = ctx.calibration if self.needs_calibration else None
        report = quantize_(model, self, calibration, ctx.on_progress, ctx.cancel).as_dict()
        ctx.notes.extend(report["notes"][:MAX_NOTES])
        if len(report["notes"]) > MAX_NOTES:
            ctx.notes.append(f"... and {len(report['notes']) - MAX_NOTES} more kernel fallbacks (see the step report)")
        model.eval()
        report.update(kind="quantize", label=self.label, step_wall_s=time.perf_counter() - started)
        return report
