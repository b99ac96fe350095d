"""The ``squeezelab`` argument parser: one subcommand per command, and one per technique in ``core.recipe.steps``."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.cli.plan import add_plan_parser
from core.export.spec import DTYPES as EXPORT_DTYPES
from core.export.spec import FORMATS, GGUF_TYPES
from core.recipe.steps import STEPS

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2
MODEL_HELP = "sample:<name>, a folder, a .gguf file or a Hub id"


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
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="time the decode step compiled by torch.compile (auto: models of 20 M parameters or more)")


def _add_load_options(parser: argparse.ArgumentParser, what: str = "") -> None:
    """The opt-ins, off unless given: every command that loads a model takes them (``what`` says for which)."""
    parser.add_argument("--allow-pickle", action="store_true",
                        help=f"load weights stored only as pickle (pytorch_model.bin){what}; unpickling can run "
                             "code, so only for files you trust")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help=f"load a model that needs its repository's own Python code{what}, and run that code; "
                             "only for authors you trust")


def _add_calibration_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib-text", default="default", help="calibration text source")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=512)


def _add_step_parsers(commands) -> None:  # noqa: ANN001 - argparse's private subparsers action
    """``squeezelab prune | quantize | distill | ...``: a one-step recipe per technique of the step table."""
    for kind, step in STEPS.items():
        parser = commands.add_parser(kind, help=step.CLI_HELP)
        parser.add_argument("--model", default="sample:teacher",
                            help=MODEL_HELP + (" (the teacher unless --teacher says)" if kind == "distill" else ""))
        step.add_cli_arguments(parser)
        if step.CLI_CALIBRATION:
            _add_calibration_options(parser)
        _add_eval_options(parser)
        _add_load_options(parser, " (also a teacher or student reference)" if kind == "distill" else "")
        _add_common(parser)


def _add_export_parser(commands) -> None:  # noqa: ANN001
    ex = commands.add_parser("export", help="write a model as hf / compressed-tensors / gguf, reload it and check it")
    ex.add_argument("source", help="a stored result id (squeezelab history), a recipe file (.yaml/.json) or a model "
                                   "reference; its recipe is run again and the model it makes is exported")
    ex.add_argument("--format", required=True, choices=list(FORMATS))
    ex.add_argument("--out", type=Path, required=True, help="the folder to create (it must not exist: --overwrite)")
    ex.add_argument("--gguf-type", default="auto", choices=list(GGUF_TYPES),
                    help="gguf: block type (auto: the exact type of each quantized layer)")
    ex.add_argument("--requantize", action="store_true",
                    help="gguf: re-round layers the requested type cannot hold exactly (lossy; otherwise refused)")
    ex.add_argument("--sparse", default="auto", choices=["auto", "always", "never"],
                    help="hf: store pruned weights as bitmask + values (auto: where that is smaller)")
    ex.add_argument("--dtype", default="auto", choices=list(EXPORT_DTYPES),
                    help="hf / compressed-tensors: float tensors' dtype (auto: the model's; fp16 if quantized)")
    ex.add_argument("--zip", action="store_true", help="also write OUT.zip")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    ex.add_argument("--check-windows", type=int, default=8, help="windows scored before export and after reload")
    _add_load_options(ex, " (on for this run, whatever its recipe says)")
    _add_common(ex)


def _add_generate_parser(commands) -> None:  # noqa: ANN001
    gen = commands.add_parser("generate", help="stream a model's (or a stored result's) continuation of a prompt, "
                                               "with its tokens/s")
    gen.add_argument("--model", default="sample:teacher",
                     help=MODEL_HELP + ", or a stored result id (its exported artifact, else its recipe run again)")
    gen.add_argument("--prompt", required=True, help="the text to continue")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0: greedy; above 0: sampled (see --seed)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--chat", default="auto", choices=["auto", "on", "off"],
                     help="wrap the prompt in the tokenizer's chat template (auto: when it has one)")
    gen.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                     help="compile the decode step with torch.compile (auto: for models of 20 M parameters or more)")
    gen.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps")
    _add_load_options(gen)
    _add_common(gen)


def _add_sweep_parser(commands) -> None:  # noqa: ANN001
    sw = commands.add_parser("sweep", help="run a grid or an Optuna search over recipe fields (resumable)")
    sw.add_argument("file", type=Path, help="a sweep file (YAML or JSON): sweep, base, grid or search, constraint")
    sw.add_argument("--backend", choices=["local", "ray"], default="local",
                    help="local: trials one after another in this process; ray: Ray tasks (pip install -e \".[ray]\")")
    sw.add_argument("--ray-address", default=None,
                    help="auto | HOST:PORT: join that Ray cluster (default: start one on this machine, 127.0.0.1 only)")
    sw.add_argument("--max-trials", type=int, default=None, help="start at most N trials now (the next run goes on)")
    sw.add_argument("--max-minutes", type=float, default=None, help="start no trial after M minutes")
    _add_common(sw)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="squeezelab", description="Compress causal language models and measure what it costs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ev = commands.add_parser("eval", help="measure a model: perplexity, accuracy, size, latency")
    ev.add_argument("--model", default="sample:teacher", help=MODEL_HELP)
    _add_eval_options(ev)
    _add_load_options(ev)
    _add_common(ev)

    _add_step_parsers(commands)

    rn = commands.add_parser("run", help="run a recipe file (YAML or JSON)")
    rn.add_argument("recipe", type=Path)
    _add_load_options(rn, " (on for this run, whatever the recipe says)")
    _add_common(rn)

    _add_export_parser(commands)
    _add_generate_parser(commands)
    _add_sweep_parser(commands)
    add_plan_parser(commands, MODEL_HELP)

    hist = commands.add_parser("history", help="list stored results")
    hist.add_argument("--csv", action="store_true", help="print CSV with the result-row columns")
    hist.add_argument("--results-dir", type=Path, default=None)

    app = commands.add_parser("app", help="start the dashboard (Streamlit, on 127.0.0.1)")
    app.add_argument("--port", type=int, default=8501)

    samples = commands.add_parser("build-samples", help="train the bundled sample models from scratch")
    samples.add_argument("args", nargs=argparse.REMAINDER, help="passed to sample_models/build.py")
    return parser
