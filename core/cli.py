"""The ``squeezelab`` command line: eval | prune | quantize | distill | run | export | history | app | build-samples.

Exit codes: 0 success, 2 bad input (the message on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from core.errors import SqueezeLabError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
REPO_ROOT = Path(__file__).resolve().parent.parent


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad arguments already; keep its message but drop the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"squeezelab: {message} (see --help)\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where results are kept (default: $SQUEEZELAB_RESULTS_DIR or ~/.squeezelab/results)")
    parser.add_argument("--json", action="store_true", help="print the result row as one JSON object")


def _add_eval_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", default="default", help="default | sample | wikitext2 | path to .txt/.parquet/.jsonl")
    parser.add_argument("--seqlen", type=int, default=None, help="window length (default: min(512, model context))")
    parser.add_argument("--max-windows", type=int, default=64, help="cap on windows scored (0: all)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default=None, help="auto | fp32 | fp16 | bf16")
    parser.add_argument("--no-latency", action="store_true", help="skip the prefill/decode timing")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="squeezelab", description="Compress causal language models and measure what it costs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ev = commands.add_parser("eval", help="measure a model: perplexity, accuracy, size, latency")
    ev.add_argument("--model", default="sample:teacher", help="sample:<name>, a folder, a .gguf file or a Hub id")
    _add_eval_options(ev)
    _add_common(ev)

    pr = commands.add_parser("prune", help="prune a model, then measure it (a one-step recipe)")
    pr.add_argument("--model", default="sample:teacher", help="sample:<name>, a folder, a .gguf file or a Hub id")
    pr.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt", "structured"])
    pr.add_argument("--sparsity", type=float, default=None, help="share of weights zeroed, e.g. 0.5")
    pr.add_argument("--threshold", type=float, default=None, help="magnitude: zero every |w| below this")
    pr.add_argument("--pattern", default="unstructured", help="unstructured, or N:M such as 2:4")
    pr.add_argument("--scope", default="per-matrix", choices=["per-matrix", "global"], help="magnitude only")
    pr.add_argument("--target", default=None, choices=["mlp_channels", "heads", "layers"], help="structured only")
    pr.add_argument("--fraction", type=float, default=None, help="structured: share of channels/heads/layers removed")
    pr.add_argument("--include", nargs="*", default=None, help="module name patterns to prune (default: all)")
    pr.add_argument("--exclude", nargs="*", default=None, help="module name patterns to keep dense")
    pr.add_argument("--recovery-steps", type=int, default=0, help="masked fine-tuning steps afterwards")
    _add_calibration_options(pr)
    _add_eval_options(pr)
    _add_common(pr)

    _add_quantize_parser(commands)
    _add_distill_parser(commands)

    rn = commands.add_parser("run", help="run a recipe file (YAML or JSON)")
    rn.add_argument("recipe", type=Path)
    _add_common(rn)

    _add_export_parser(commands)

    hist = commands.add_parser("history", help="list stored results")
    hist.add_argument("--csv", action="store_true", help="print CSV with the result-row columns")
    hist.add_argument("--results-dir", type=Path, default=None)

    app = commands.add_parser("app", help="start the dashboard (Streamlit, on 127.0.0.1)")
    app.add_argument("--port", type=int, default=8501)

    samples = commands.add_parser("build-samples", help="train the bundled sample models from scratch")
    samples.add_argument("args", nargs=argparse.REMAINDER, help="passed to sample_models/build.py")
    return parser


def _add_calibration_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib-text", default="default", help="calibration text source")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=512)


def _add_quantize_parser(commands) -> None:
    qu = commands.add_parser("quantize", help="quantize a model's weights, then measure it (a one-step recipe)")
    qu.add_argument("--model", default="sample:teacher", help="sample:<name>, a folder, a .gguf file or a Hub id")
    qu.add_argument("--method", default="rtn", choices=["rtn", "gptq", "int8_dynamic", "fp16", "bf16"])
    qu.add_argument("--bits", type=int, default=4, help="2 to 8")
    qu.add_argument("--group-size", type=int, default=0, help="input columns per scale (0: one per output channel)")
    qu.add_argument("--asymmetric", action="store_true", help="a zero point per group (default: symmetric)")
    qu.add_argument("--act-order", action=argparse.BooleanOptionalAction, default=True,
                    help="gptq: columns by decreasing Hessian diagonal (default: on)")
    qu.add_argument("--kernel", default="auto", help="auto | dequant | int8_weight_only | int4_weight_only | "
                                                     "int8_dynamic")
    qu.add_argument("--lm-head", action="store_true", help="also quantize lm_head (RTN)")
    qu.add_argument("--include", nargs="*", default=None, help="module name patterns to quantize (default: all)")
    qu.add_argument("--exclude", nargs="*", default=None, help="module name patterns to keep as they are")
    _add_calibration_options(qu)
    _add_eval_options(qu)
    _add_common(qu)


def _add_export_parser(commands) -> None:
    ex = commands.add_parser("export", help="write a model as hf / compressed-tensors / gguf, reload it and check it")
    ex.add_argument("source", help="a stored result id (squeezelab history), a recipe file (.yaml/.json) or a model "
                                   "reference; its recipe is run again and the model it makes is exported")
    ex.add_argument("--format", required=True, choices=["hf", "compressed-tensors", "gguf"])
    ex.add_argument("--out", type=Path, required=True, help="the folder to create (it must not exist: --overwrite)")
    ex.add_argument("--gguf-type", default="auto", choices=["auto", "F32", "F16", "Q8_0", "Q4_0", "Q4_1"],
                    help="gguf: block type (auto: the exact type of each quantized layer)")
    ex.add_argument("--requantize", action="store_true",
                    help="gguf: re-round layers the requested type cannot hold exactly (lossy; otherwise refused)")
    ex.add_argument("--sparse", default="auto", choices=["auto", "always", "never"],
                    help="hf: store pruned weights as bitmask + values (auto: where that is smaller)")
    ex.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                    help="hf / compressed-tensors: float tensors' dtype (auto: the model's; ct: fp16 if quantized)")
    ex.add_argument("--zip", action="store_true", help="also write OUT.zip")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    ex.add_argument("--check-windows", type=int, default=8, help="windows scored before export and after reload")
    _add_common(ex)


def _add_distill_parser(commands) -> None:
    ds = commands.add_parser("distill", help="train a student to match a teacher, then measure it (a one-step recipe)")
    ds.add_argument("--model", default="sample:teacher", help="the base model (the teacher unless --teacher says)")
    ds.add_argument("--teacher", default=None, help="base (default) or a model reference")
    ds.add_argument("--student", default=None,
                    help="self | layer_drop | width | a model reference with the teacher's tokenizer (default: self)")
    ds.add_argument("--keep-layers", type=int, nargs="+", default=None, help="layer_drop: the blocks kept")
    ds.add_argument("--keep-every", type=int, default=None, help="layer_drop: keep blocks 0, k, 2k, ... (default 2)")
    ds.add_argument("--width-fraction", type=float, default=None, help="width: share of MLP channels removed")
    ds.add_argument("--temperature", type=float, default=None, help="softmax temperature T (default 2)")
    ds.add_argument("--alpha", type=float, default=None, help="weight of the KD term in [0, 1] (default 0.5)")
    ds.add_argument("--hidden-weight", type=float, default=None, help="weight of the hidden-state MSE (default 0)")
    ds.add_argument("--steps", type=int, default=None, help="optimizer steps (default 200)")
    ds.add_argument("--lr", type=float, default=None, help="peak learning rate (default 1e-4)")
    ds.add_argument("--batch-size", type=int, default=None, help="windows per micro-batch (default 8)")
    ds.add_argument("--train-seqlen", type=int, default=None, help="tokens per training window (default 256)")
    ds.add_argument("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
    ds.add_argument("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 10%% of steps)")
    ds.add_argument("--eval-every", type=int, default=None, help="held-out perplexity every N steps (default 50)")
    ds.add_argument("--eval-windows", type=int, default=None, help="held-out windows (default 8)")
    ds.add_argument("--max-minutes", type=float, default=None, help="wall-time budget for training")
    ds.add_argument("--train-text", default=None, help="training text source (default: the calibration-side text)")
    ds.add_argument("--seed", type=int, default=None)
    _add_eval_options(ds)
    _add_common(ds)


def _progress_printer(enabled: bool) -> Callable[[str, float], None] | None:
    if not enabled:
        return None
    last: dict[str, int] = {}

    def report(stage: str, fraction: float) -> None:
        percent = int(fraction * 100)
        if last.get(stage, -10) + 10 <= percent or fraction >= 1.0 and last.get(stage) != 100:
            last[stage] = percent
            print(f"  {stage}: {percent}%", file=sys.stderr, flush=True)

    return report


def _print_row(row, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row.to_dict()))
        return
    details = row.details or {}
    latency = details.get("latency") or {}
    lines = [
        ("model", row.model),
        ("perplexity", f"{row.perplexity:.4f}  ({details.get('windows')} windows x {details.get('seqlen')} tokens, "
                       f"text: {details.get('text')})"),
        ("top-1 accuracy", f"{100 * row.top1_acc:.2f}%"),
        ("parameters", f"{row.params:,} ({row.nonzero_params:,} non-zero)"),
        ("artifact on disk" if details.get("export") else "weights in memory",
         f"{row.size_bytes / 2**20:.2f} MiB ({row.bits_per_weight:.2f} bits/weight)"),
        ("kernel", row.kernel),
    ]
    if row.perplexity is not None and row.base_perplexity is not None and details.get("steps"):
        lines.insert(2, ("base perplexity", f"{row.base_perplexity:.4f}  (same windows)"))
        lines.insert(3, ("steps", details.get("method")))
        if row.top1_agreement is not None:
            agreement = f"top-1 {100 * row.top1_agreement:.2f}%, KL(base||model) {row.kl_to_base:.4f}"
            lines.insert(4, ("agreement with base", agreement))
        lines[4:4] = [("distillation", _distill_summary(step)) for step in details["steps"]
                      if step.get("kind") == "distill"]
    if latency:
        lines += [
            ("prefill", f"{row.prefill_ms:.1f} ms for {latency['prompt_tokens']} tokens (median of {latency['runs']})"),
            ("decode", f"{row.decode_tok_s:.1f} tokens/s over {latency['new_tokens']} tokens, batch 1, KV cache"),
            ("peak memory", f"{row.peak_mem_bytes / 2**20:.0f} MiB"),
        ]
    if details.get("export"):
        lines += _export_lines(details["export"])
    lines += [("device", f"{row.device}, {details.get('dtype')}, {details.get('threads')} threads"),
              ("wall time", f"{row.wall_s:.1f} s"), ("result id", row.id)]
    width = max(len(name) for name, _ in lines)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in lines))


def _export_lines(export: dict) -> list[tuple[str, str]]:
    """The export's path, sizes and check, for the plain-text result."""
    verdict = "passed" if export.get("check_passed") else "FAILED"
    check = (f"{verdict}: perplexity {export['perplexity_before']:.4f} before export, {export['perplexity_after']:.4f} "
             f"after reload ({export['windows']} windows x {export['seqlen']} tokens; tokenizer "
             f"{'identical' if export.get('tokenizer_match') else 'DIFFERENT'})")
    lines = [("export", f"{export['format']} -> {export['path']}"),
             ("weights file(s)", f"{export['weights_bytes'] / 2**20:.2f} MiB (the schemes promise "
                                 f"{export['promised_bytes'] / 2**20:.2f} MiB)"),
             ("reload check", check),
             ("export / reload", f"{export['export_s']:.1f} s / {export['reload_s']:.1f} s")]
    if export.get("zip_path"):
        lines.append(("zip", f"{export['zip_path']} ({export['zip_bytes'] / 2**20:.2f} MiB)"))
    lines += [("export note", note) for note in export.get("notes") or []]
    return lines


def _distill_summary(report: dict) -> str:
    """'200/200 steps (completed), held-out perplexity 91.07 -> 84.20 (best at step 200), 1,400 tokens/s'."""
    best = report.get("best_perplexity")
    best_text = f"{best:.2f} (best at step {report['best_step']})" if best is not None else "n/a"
    return (f"{report['steps_done']}/{report['steps_planned']} steps ({report['stopped']}), held-out perplexity "
            f"{report['initial_perplexity']:.2f} -> {best_text}, {report['tokens_per_s']:,.0f} tokens/s")


def _eval_spec(args: argparse.Namespace):
    from core.specs import EvalSpec

    return EvalSpec(text=args.text, seqlen=args.seqlen, max_windows=args.max_windows or None,
                    latency=not args.no_latency)


def cmd_eval(args: argparse.Namespace) -> int:
    from core.specs import Recipe

    return _run_recipe(Recipe(model=args.model, evaluation=_eval_spec(args), device=args.device, dtype=args.dtype),
                       args)


def prune_params(args: argparse.Namespace) -> dict:
    """The recipe's ``prune:`` mapping for the given options (only what was set)."""
    if args.method == "structured":
        params = {"method": "structured", "target": args.target, "fraction": args.fraction}
    else:
        params = {"method": args.method, "sparsity": args.sparsity, "threshold": args.threshold,
                  "pattern": args.pattern, "scope": args.scope, "include": args.include, "exclude": args.exclude}
    params["recovery_steps"] = args.recovery_steps
    defaults = {"pattern": "unstructured", "scope": "per-matrix", "recovery_steps": 0}
    return {key: value for key, value in params.items() if value is not None and defaults.get(key) != value}


def _one_step(args: argparse.Namespace, kind: str, params: dict) -> int:
    from core.specs import CalibrationSpec, Recipe, Step

    calibration = CalibrationSpec(text=args.calib_text, samples=args.calib_samples, seqlen=args.calib_seqlen)
    recipe = Recipe(model=args.model, steps=(Step(kind, params),), calibration=calibration,
                    evaluation=_eval_spec(args), device=args.device, dtype=args.dtype)
    return _run_recipe(recipe, args)


def cmd_prune(args: argparse.Namespace) -> int:
    return _one_step(args, "prune", prune_params(args))


def quantize_params(args: argparse.Namespace) -> dict:
    """The recipe's ``quantize:`` mapping for the given options (only what differs from the defaults)."""
    params = {"method": args.method, "bits": args.bits, "group_size": args.group_size or None,
              "symmetric": not args.asymmetric, "act_order": args.act_order, "kernel": args.kernel,
              "lm_head": args.lm_head, "include": args.include, "exclude": args.exclude}
    defaults = {"group_size": None, "symmetric": True, "act_order": True, "kernel": "auto", "lm_head": False}
    return {key: value for key, value in params.items()
            if value is not None and (key not in defaults or defaults[key] != value)}


def cmd_quantize(args: argparse.Namespace) -> int:
    return _one_step(args, "quantize", quantize_params(args))


DISTILL_OPTIONS = ("teacher", "student", "keep_layers", "keep_every", "width_fraction", "temperature", "alpha",
                   "hidden_weight", "steps", "lr", "batch_size", "grad_accum", "warmup_steps", "eval_every",
                   "eval_windows", "max_minutes", "seed")


def distill_params(args: argparse.Namespace) -> dict:
    """The recipe's ``distill:`` mapping for the given options (only what was set)."""
    params = {key: getattr(args, key) for key in DISTILL_OPTIONS if getattr(args, key) is not None}
    if args.train_seqlen is not None:
        params["seqlen"] = args.train_seqlen
    if args.train_text is not None:
        params["text"] = args.train_text
    return params


def cmd_distill(args: argparse.Namespace) -> int:
    from core.specs import Recipe, Step

    recipe = Recipe(model=args.model, steps=(Step("distill", distill_params(args)),), evaluation=_eval_spec(args),
                    device=args.device, dtype=args.dtype)
    return _run_recipe(recipe, args)


def cmd_run(args: argparse.Namespace) -> int:
    from core.specs import load_recipe

    return _run_recipe(load_recipe(args.recipe), args)


def _run_recipe(recipe, args: argparse.Namespace) -> int:
    from core import pipeline
    from core.store import ResultStore

    row = pipeline.run(recipe, ResultStore(args.results_dir), on_progress=_progress_printer(not args.json))
    _print_row(row, args.json)
    return EXIT_OK


def export_params(args: argparse.Namespace) -> dict:
    """The recipe's ``export:`` mapping for the given options."""
    sparse = {"auto": "auto", "always": True, "never": False}[args.sparse]
    return {"format": args.format, "path": str(args.out), "gguf_type": args.gguf_type, "requantize": args.requantize,
            "sparse": sparse, "dtype": args.dtype, "zip": args.zip, "overwrite": args.overwrite,
            "check_windows": args.check_windows}


def export_source_recipe(source: str, results_dir: Path | None):
    """The recipe behind ``source``: a stored result's, a recipe file's, or an evaluation of a model reference."""
    import yaml

    from core.specs import Recipe, load_recipe
    from core.store import ResultStore, UnknownResultError

    path = Path(source).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json") and path.is_file():
        return load_recipe(path)
    try:
        row = ResultStore(results_dir).get(source)
    except UnknownResultError:
        return Recipe(model=source)  # a model reference (checked when the recipe runs)
    return Recipe.from_dict(yaml.safe_load(row.recipe))


def cmd_export(args: argparse.Namespace) -> int:
    import dataclasses

    from core.export import ExportSpec

    recipe = export_source_recipe(args.source, args.results_dir)
    recipe = dataclasses.replace(recipe, export=ExportSpec.from_dict(export_params(args)).as_dict())
    return _run_recipe(recipe, args)


def cmd_history(args: argparse.Namespace) -> int:
    from core.store import ResultStore

    store = ResultStore(args.results_dir)
    if args.csv:
        sys.stdout.write(store.to_csv())
        return EXIT_OK
    rows = store.list()
    if not rows:
        print(f"no results yet in {store.root}")
    for row in rows:
        ppl = f"{row.perplexity:.3f}" if row.perplexity is not None else "-"
        print(f"{row.id}  {row.status:<9}  ppl {ppl:>9}  {row.model}" + (f"  ({row.error})" if row.error else ""))
    return EXIT_OK


def cmd_app(args: argparse.Namespace) -> int:
    app = REPO_ROOT / "app.py"
    if not app.is_file():
        raise SqueezeLabError(f"the dashboard ({app}) is not part of this installation; use `squeezelab eval`")
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", "127.0.0.1",
               "--server.port", str(args.port), "--browser.gatherUsageStats", "false"]
    return subprocess.call(command, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def cmd_build_samples(args: argparse.Namespace) -> int:
    from sample_models import build

    return build.main(args.args)


COMMANDS = {"eval": cmd_eval, "prune": cmd_prune, "quantize": cmd_quantize, "distill": cmd_distill, "run": cmd_run,
            "export": cmd_export, "history": cmd_history, "app": cmd_app, "build-samples": cmd_build_samples}


def _quiet_libraries() -> None:
    """Our own progress lines replace the libraries' progress bars and advisory warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``squeezelab`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except SqueezeLabError as exc:
        print(f"squeezelab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("squeezelab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: keep the traceback for a bug report
        import traceback

        traceback.print_exc()
        print(f"squeezelab: internal error ({type(exc).__name__}); please report it with the traceback above",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
