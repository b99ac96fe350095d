"""The ``squeezelab`` commands: each turns parsed options into a recipe (or a store query) and runs it."""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from core.calibration.spec import CalibrationSpec
from core.cli.output import print_row, progress_printer
from core.cli.parser import EXIT_OK
from core.cli.plan import cmd_plan
from core.errors import SpecError, SqueezeLabError
from core.evaluate.spec import EvalSpec
from core.export.spec import ExportSpec
from core.recipe import pipeline
from core.recipe.recipe import Recipe, Step, load_recipe
from core.recipe.steps import STEPS
from core.store import ResultStore, UnknownResultError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _eval_spec(args: argparse.Namespace):
    return EvalSpec(text=args.text, seqlen=args.seqlen, max_windows=args.max_windows or None,
                    latency=not args.no_latency, compile={"auto": None, "on": True, "off": False}[args.compile])


def _opt_ins(args: argparse.Namespace) -> dict[str, bool]:
    """``--allow-pickle`` / ``--trust-remote-code`` as recipe keys (off unless given)."""
    return {"allow_pickle": args.allow_pickle, "trust_remote_code": args.trust_remote_code}


def with_opt_ins(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """``recipe`` with the opt-ins the command line gives turned on (never off: a recipe's own stay)."""
    turned_on = {name: getattr(recipe, name) or given for name, given in _opt_ins(args).items()}
    return dataclasses.replace(recipe, **turned_on)


def cmd_eval(args: argparse.Namespace) -> int:
    return _run_recipe(Recipe(model=args.model, evaluation=_eval_spec(args), device=args.device, dtype=args.dtype,
                              **_opt_ins(args)), args)


def step_command(kind: str) -> Callable[[argparse.Namespace], int]:
    """``squeezelab <kind>``: a one-step recipe from the step's own options (``STEPS[kind].params_from_cli``)."""
    step = STEPS[kind]

    def command(args: argparse.Namespace) -> int:
        calibration = CalibrationSpec(text=args.calib_text, samples=args.calib_samples,
                                      seqlen=args.calib_seqlen) if step.CLI_CALIBRATION else CalibrationSpec()
        recipe = Recipe(model=args.model, steps=(Step(kind, step.params_from_cli(args)),), calibration=calibration,
                        evaluation=_eval_spec(args), device=args.device, dtype=args.dtype, **_opt_ins(args))
        return _run_recipe(recipe, args)

    return command


def cmd_run(args: argparse.Namespace) -> int:
    return _run_recipe(with_opt_ins(load_recipe(args.recipe), args), args)


def _run_recipe(recipe, args: argparse.Namespace) -> int:
    for risk in pipeline.known_risks(recipe):  # before anything runs: a setting known to collapse a model
        print(f"warning: {risk}", file=sys.stderr, flush=True)
    row = pipeline.run(recipe, ResultStore(args.results_dir), on_progress=progress_printer(not args.json))
    print_row(row, args.json)
    return EXIT_OK


def export_params(args: argparse.Namespace) -> dict:
    """The recipe's ``export:`` mapping for the given options."""
    sparse = {"auto": "auto", "always": True, "never": False}[args.sparse]
    return {"format": args.format, "path": str(args.out), "gguf_type": args.gguf_type, "requantize": args.requantize,
            "sparse": sparse, "dtype": args.dtype, "zip": args.zip, "overwrite": args.overwrite,
            "check_windows": args.check_windows}


# The store's result ids: `YYYYMMDD-HHMMSS-` and six hex digits (core.store.ResultStore.start)
RESULT_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")


def export_source_recipe(source: str, results_dir: Path | None):
    """The recipe behind ``source``: a stored result's, a recipe file's, or an evaluation of a model reference."""
    path = Path(source).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        return load_recipe(path)  # says so when the file is missing, unreadable or not a recipe
    store = ResultStore(results_dir, read_only=True)
    try:
        row = store.get(source)
    except UnknownResultError:
        if RESULT_ID.fullmatch(source.strip()):
            where = "" if results_dir is None else f" --results-dir {results_dir}"
            raise UnknownResultError(f"no result with id {source!r} in {store.db_path} (see `squeezelab history"
                                     f"{where}` for the ids that exist)") from None
        return Recipe(model=source)  # a model reference (checked when the recipe runs)
    try:
        return Recipe.from_dict(yaml.safe_load(row.recipe))
    except (yaml.YAMLError, SpecError) as exc:  # a row written by hand, or by a SqueezeLab with other keys
        raise SpecError(f"the recipe stored with result {source} cannot be run again ({exc}); export from a "
                        "recipe file or a model reference instead") from exc


def cmd_export(args: argparse.Namespace) -> int:
    recipe = with_opt_ins(export_source_recipe(args.source, args.results_dir), args)
    recipe = dataclasses.replace(recipe, export=ExportSpec.from_dict(export_params(args)).as_dict())
    return _run_recipe(recipe, args)


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream the continuation to stdout; what ran and how fast to stderr (or one JSON object with --json)."""
    import json

    from core.generate import generate_stream, load_for_generation

    switch = {"auto": None, "on": True, "off": False}
    chosen = load_for_generation(args.model, args.results_dir, args.device, args.allow_pickle,
                                 args.trust_remote_code)
    pieces = []
    for piece in generate_stream(chosen.loaded.model, chosen.loaded.tokenizer, args.prompt, args.max_new_tokens,
                                 args.temperature, args.seed, switch[args.chat], switch[args.compile]):
        pieces.append(piece)
        if not args.json:
            sys.stdout.write(piece.text)
            sys.stdout.flush()
    last = pieces[-1]
    speed = f"{last.decode_tok_s:.1f} tok/s decode" if last.decode_tok_s else "too short for a decode speed"
    summary = {"model": chosen.label, "text": "".join(p.text for p in pieces), "tokens": last.tokens,
               "prompt_tokens": last.prompt_tokens, "prefill_ms": last.prefill_ms, "decode_tok_s": last.decode_tok_s,
               "stop": last.stop, "loop": last.loop, "notes": list(last.notes)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"\n[{chosen.label}: {last.tokens} tokens, {speed}, prefill {last.prefill_ms:.0f} ms for "
              f"{last.prompt_tokens} tokens, stop: {last.stop}; {last.loop}]", file=sys.stderr)
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    """``squeezelab sweep FILE``: run (or resume) a sweep and print its front and best trial."""
    from core.cli import sweep_output
    from core.sweep import load_sweep, run_sweep, sweep_cost

    spec = load_sweep(args.file)
    store = ResultStore(args.results_dir)
    if not args.json:
        sweep_output.print_plan(spec, sweep_cost(spec, store, args.max_trials), args.backend)
    report = run_sweep(spec, store, backend=args.backend, ray_address=args.ray_address, max_trials=args.max_trials,
                       max_minutes=args.max_minutes, on_trial=sweep_output.trial_printer(not args.json))
    sweep_output.print_report(report, args.json)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    store = ResultStore(args.results_dir, read_only=True)  # listing writes nothing: no folder, schema or reaping
    if args.csv:
        sys.stdout.write(store.to_csv())
        return EXIT_OK
    rows = store.list()
    if not rows:
        print(f"no results yet in {store.root}")
    for row in rows:
        ppl = f"{row.perplexity:.3f}" if row.perplexity is not None else "-"
        method = (row.details or {}).get("method")  # what the steps did, e.g. 'wanda 50%' (rows that finished)
        print(f"{row.id}  {row.status:<9}  ppl {ppl:>9}  {row.model}" + (f"  {method}" if method else "")
              + (f"  ({row.error})" if row.error else ""))
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "eval": cmd_eval, **{kind: step_command(kind) for kind in STEPS}, "run": cmd_run, "export": cmd_export,
    "generate": cmd_generate, "sweep": cmd_sweep, "history": cmd_history, "app": cmd_app,
    "build-samples": cmd_build_samples, "plan": cmd_plan,
}
