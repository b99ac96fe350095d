"""``squeezelab plan``: choose each layer's bits (or sparsity) under a budget and write the recipe that runs it.

    squeezelab plan --model REF --quantize rtn|gptq|awq [--bits 2 3 4 8] [--group-size 32 64]
                    (--avg-bits B | --size-mb M | --max-ppl P) [--mode proxy|measured] --out PLAN.yaml [--json]
    squeezelab plan --model REF --prune wanda|sparsegpt|magnitude [--sparsity-levels 0 0.25 0.5 0.75]
                    (--sparsity S | --size-mb M | --max-ppl P) ... --out PLAN.yaml

The atlas is cached under the results folder, so a second budget on the same model, text and menu
plans in a moment. ``squeezelab run PLAN.yaml`` runs the plan (it needs no planning again).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from core.calibration.spec import CalibrationSpec
from core.checks import require
from core.cli.output import progress_printer
from core.evaluate.spec import EvalSpec
from core.models.loading import load
from core.plan.menu import DEFAULT_BITS, DEFAULT_HELDOUT, DEFAULT_LEVELS, MODES, PRUNE_METHODS, QUANT_METHODS
from core.recipe import pipeline
from core.recipe.budget import plan_step
from core.recipe.recipe import Recipe, Step
from core.store import ResultStore

BUDGET_OPTIONS = {"avg_bits": "--avg-bits", "size_mb": "--size-mb", "sparsity": "--sparsity", "max_ppl": "--max-ppl"}


def add_plan_parser(commands, model_help: str) -> None:  # noqa: ANN001 - argparse's private subparsers action
    """``squeezelab plan`` and its options (the parser module passes its help text for --model)."""
    p = commands.add_parser("plan", help="choose per-layer bits or sparsity under a budget; write the recipe")
    p.add_argument("--model", default="sample:teacher", help=model_help)
    p.add_argument("--quantize", choices=list(QUANT_METHODS), help="plan a quantization with this method")
    p.add_argument("--bits", type=int, nargs="+", default=list(DEFAULT_BITS), help="the widths a layer may take")
    p.add_argument("--group-size", type=int, nargs="+", default=[0], help="the group sizes a layer may take (0: per "
                                                                          "output channel)")
    p.add_argument("--asymmetric", action="store_true", help="a zero point per group (default: symmetric)")
    p.add_argument("--prune", choices=list(PRUNE_METHODS), help="plan a pruning with this method")
    p.add_argument("--sparsity-levels", type=float, nargs="+", default=list(DEFAULT_LEVELS))
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--avg-bits", type=float, help="stored bits per weight of the planned layers (quantize)")
    budget.add_argument("--size-mb", type=float, help="stored bytes of all weights, in 10^6")
    budget.add_argument("--sparsity", type=float, help="share of zeros among the planned layers (prune)")
    budget.add_argument("--max-ppl", type=float, help="the smallest model whose predicted perplexity is at most this")
    p.add_argument("--mode", choices=list(MODES), default="proxy",
                   help="proxy: second-order costs (fast); measured: KL with one layer changed at a time")
    p.add_argument("--heldout", type=int, default=DEFAULT_HELDOUT, help="calibration windows that score the costs")
    p.add_argument("--heldout-tokens", type=int, default=None,
                   help="score only the first N tokens of each held-out window (a measured atlas costs in proportion)")
    p.add_argument("--calib-text", default="default", help="calibration text source")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--text", default="default", help="the written recipe's evaluation text")
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--max-windows", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--out", type=Path, required=True, help="the recipe file to write (.yaml or .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--results-dir", type=Path, default=None, help="where results and cached atlases are kept")
    p.add_argument("--json", action="store_true",
                   help='print {"predicted": {...}, "recipe": {...}, "layers": [...], "atlas": {...}}')


def budget_step(args: argparse.Namespace) -> Step:
    """The one step to plan, with its ``budget:`` (bad combinations refused with what to give)."""
    require((args.quantize is None) != (args.prune is None),
            "give --quantize METHOD or --prune METHOD (one technique per plan; two budget steps in a recipe "
            "plan one after the other)")
    target = next(name for name, flag in BUDGET_OPTIONS.items() if getattr(args, name) is not None)
    technique = "quantize" if args.quantize else "prune"
    allowed = ("avg_bits", "size_mb", "max_ppl") if technique == "quantize" else ("sparsity", "size_mb", "max_ppl")
    require(target in allowed, f"{BUDGET_OPTIONS[target]} does not bound a {technique} plan; give one of "
                               f"{', '.join(BUDGET_OPTIONS[t] for t in allowed)}")
    budget = {target: getattr(args, target), "mode": args.mode, "heldout": args.heldout}
    if args.heldout_tokens is not None:
        budget["heldout_tokens"] = args.heldout_tokens
    if technique == "quantize":
        budget.update(bits=args.bits, group_sizes=args.group_size)
        return Step("quantize", {"method": args.quantize, "symmetric": not args.asymmetric, "budget": budget})
    return Step("prune", {"method": args.prune, "budget": {**budget, "levels": args.sparsity_levels}})


def cmd_plan(args: argparse.Namespace) -> int:
    step = budget_step(args)
    require(args.overwrite or not args.out.exists(), f"{args.out} already exists; choose another --out or add "
                                                     "--overwrite")
    recipe = Recipe(model=args.model, steps=(step,), calibration=CalibrationSpec(args.calib_text, args.calib_samples,
                                                                                 args.calib_seqlen),
                    evaluation=EvalSpec(text=args.text, seqlen=args.seqlen, max_windows=args.max_windows or None,
                                        latency=not args.no_latency), device=args.device, dtype=args.dtype)
    on_progress = progress_printer(not args.json)
    loaded = load(recipe.model, device=recipe.device, dtype=recipe.dtype)
    context = pipeline.step_context(recipe, loaded, on_progress, None)
    planned, plan, atlas = plan_step(step, loaded.model, loaded, recipe, context, ResultStore(args.results_dir).root)
    resolved = Recipe.from_dict({**recipe.to_dict(), "steps": [{planned.kind: planned.params}]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(resolved.to_dict(), indent=1) if args.out.suffix.lower() == ".json"
                        else resolved.to_yaml())
    _print_plan(plan, resolved, atlas, args)
    return 0  # EXIT_OK (core.cli.parser imports this module, so not the other way round)


def _print_plan(plan, recipe: Recipe, atlas, args: argparse.Namespace) -> None:  # noqa: ANN001 - Plan, Atlas
    predicted = plan.predicted()
    rho = atlas.spearman()
    if args.json:
        print(json.dumps(_finite({"predicted": predicted, "recipe": recipe.to_dict(), "layers": plan.layer_rows(),
                                  "atlas": {"key": atlas.key, "mode": args.mode, "timings": atlas.timings,
                                            "spearman_proxy_vs_measured": rho}})))
        return
    counts: dict[str, int] = {}
    for option in plan.options:
        counts[option.label] = counts.get(option.label, 0) + 1
    lines = [("budget", plan.budget.label()), ("layers", ", ".join(f"{n} at {label}" for label, n in counts.items())),
             ("predicted size", f"{plan.size_bytes / 1e6:.3f} MB of weights as stored ({plan.avg_bits:.3f} bits/weight "
                                f"in the planned layers, {plan.sparsity:.1%} zeros)"),
             ("predicted perplexity", f"{plan.perplexity:.3f} ({plan.perplexity_ratio:.4f} x the base "
                                      f"{plan.base_perplexity:.3f} on the atlas's held-out calibration windows)"),
             ("costs", f"{args.mode} (atlas {atlas.key}, built in {atlas.timings.get('total_s', 0):.0f} s"
                       + (f"; proxy vs measured Spearman {rho['all']:.3f}" if rho else "") + ")"),
             ("recipe", f"{args.out}  (run it: squeezelab run {args.out})")]
    width = max(len(name) for name, _ in lines)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in lines))


def _finite(value):  # noqa: ANN001, ANN202 - plain JSON data
    """``value`` with NaN and infinities as None: strict JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
