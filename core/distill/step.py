"""The recipe's ``distill:`` step: check the data and the pair, build or load the student, train it.

The training text is checked before the model is changed in any way.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from core import data
from core.checks import require
from core.distill.spec import BUILT_IN_STUDENTS, HOLDOUT, DistillSpec
from core.distill.students import build_student_, check_compatible, load_student
from core.distill.train import RecordFn, distill_
from core.errors import TextSourceError
from core.models.source import context_length
from core.progress import CancelFn, ProgressFn
from core.technique import StepContext


def training_data(tokenizer: Any, spec: DistillSpec, seqlen: int,
                  default_text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(training token ids [n], held-out windows [eval_windows, seqlen]) checked before training starts.

    With ``eval_text: holdout`` the held-out windows are the tail of the training text and are removed
    from what training draws from, so the checkpoint is chosen on text the student never saw.
    """
    bos = data.added_bos(tokenizer)
    ids = data.without_leading_bos(data.tokenize(tokenizer, data.load_text(spec.text, default=default_text).text), bos)
    needed = spec.batch_size * seqlen
    if spec.eval_text == HOLDOUT:
        # with a BOS each held-out window is <bos> + seqlen - 1 tokens of the tail, as evaluation scores it
        held = spec.eval_windows * (seqlen - (bos is not None))
        if ids.numel() < needed + held:
            raise TextSourceError(
                f"the training text {spec.text!r} has {ids.numel():,} tokens; one batch needs batch_size x seqlen = "
                f"{spec.batch_size} x {seqlen} = {needed:,} and the held-out tail {spec.eval_windows} x {seqlen} = "
                f"{held:,}; use a longer text, or a smaller batch_size, seqlen or eval_windows")
        return ids[: ids.numel() - held], data.windows(ids[ids.numel() - held:], seqlen, spec.eval_windows, bos=bos)
    if ids.numel() < needed:
        raise TextSourceError(
            f"the training text {spec.text!r} has {ids.numel():,} tokens but one batch needs batch_size x seqlen = "
            f"{spec.batch_size} x {seqlen} = {needed:,}; use a longer text or a smaller batch_size or seqlen")
    eval_ids = data.tokenize(tokenizer, data.load_text(spec.eval_text, default=default_text).text)
    return ids, data.windows(eval_ids, seqlen, spec.eval_windows, bos=bos)



def _teacher_for(spec: DistillSpec, base: nn.Module | None, tokenizer: Any, like: nn.Module,
                 load_options: dict[str, bool]) -> tuple[nn.Module, Any]:
    """(teacher, its tokenizer): the recipe's base model, or the model ``spec.teacher`` names."""
    if spec.teacher != "base":
        loaded = load_student(spec.teacher, like, **load_options)
        return loaded.model, loaded.tokenizer
    require(base is not None, "distillation with teacher: base needs the recipe's base model; run it as a "
                               "recipe step, or name the teacher (teacher: sample:teacher)")
    return base, tokenizer


def run_step(model: nn.Module, spec: DistillSpec, teacher: nn.Module | None, tokenizer: Any, default_text: str,
             on_progress: ProgressFn | None = None, cancel: CancelFn | None = None,
             on_step: RecordFn | None = None,
             load_options: dict[str, bool] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Distil into ``model`` (in place) or into a loaded student; returns (the trained model, the report).

    ``teacher`` is the recipe's base model (never modified); ``spec.teacher`` may name another model.
    ``tokenizer`` is the base model's; a loaded student or teacher must map text to the same ids.
    ``load_options`` (``allow_pickle``, ``trust_remote_code``) apply to a student or teacher loaded by reference.
    The training text is checked before ``model`` is changed in any way. A cancel stops training before its
    next step; the student keeps the best weights so far and the report says ``stopped: cancelled``.
    """
    load_options = load_options or {}
    teacher, teacher_tokenizer = _teacher_for(spec, teacher, tokenizer, model, load_options)
    loaded = None if spec.student in BUILT_IN_STUDENTS else load_student(spec.student, model, **load_options)
    student_tokenizer = loaded.tokenizer if loaded is not None else tokenizer
    student_config = (loaded.model if loaded else model).config
    seqlen = min(spec.seqlen, context_length(teacher.config), context_length(student_config))
    train_ids, eval_windows = training_data(student_tokenizer, spec, seqlen, default_text)
    student, description = (loaded.model, spec.student) if loaded is not None else build_student_(model, spec)
    notes = check_compatible(teacher, student, teacher_tokenizer, student_tokenizer)
    if seqlen < spec.seqlen:
        notes.append(f"seqlen {spec.seqlen} cut to the models' context, {seqlen}")
    if next(student.parameters()).dtype in (torch.float16, torch.bfloat16):
        notes.append("the student's weights are 16-bit, so updates smaller than their precision are lost; load the "
                     "model in fp32 (dtype: fp32) to train fp32 weights under autocast")
    report = distill_(student, teacher, spec, train_ids, eval_windows, on_progress=on_progress, cancel=cancel,
                      on_step=on_step, bos=data.added_bos(student_tokenizer))
    result = report.as_dict()
    result.update(student=description, teacher=spec.teacher, notes=notes + result["notes"], kind="distill",
                  label=spec.label)
    return student, result


# options that map one to one onto DistillSpec fields (--train-seqlen and --train-text are renamed)
CLI_OPTIONS = ("teacher", "student", "keep_layers", "keep_every", "width_fraction", "temperature", "alpha",
               "hidden_weight", "steps", "lr", "batch_size", "grad_accum", "warmup_steps", "eval_every",
               "eval_windows", "max_minutes", "seed")


@dataclass(frozen=True)
class DistillStep(DistillSpec):
    """``distill:`` in a recipe (see ``DistillSpec`` for the parameters)."""

    CLI_HELP: ClassVar[str] = "train a student to match a teacher, then measure it (a one-step recipe)"
    CLI_CALIBRATION: ClassVar[bool] = False  # it reads its own training text (--train-text)

    @staticmethod
    def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
        """The ``squeezelab distill`` options (each left out of the recipe unless given)."""
        add = parser.add_argument
        add("--teacher", default=None, help="base (default) or a model reference")
        add("--student", default=None,
            help="self | layer_drop | width | a model reference with the teacher's tokenizer (default: self)")
        add("--keep-layers", type=int, nargs="+", default=None, help="layer_drop: the blocks kept")
        add("--keep-every", type=int, default=None, help="layer_drop: keep blocks 0, k, 2k, ... (default 2)")
        add("--width-fraction", type=float, default=None, help="width: share of MLP channels removed")
        add("--temperature", type=float, default=None, help="softmax temperature T (default 2)")
        add("--alpha", type=float, default=None, help="weight of the KD term in [0, 1] (default 0.5)")
        add("--hidden-weight", type=float, default=None, help="weight of the hidden-state MSE (default 0)")
        add("--steps", type=int, default=None, help="optimizer steps (default 200)")
        add("--lr", type=float, default=None, help="peak learning rate (default 1e-4)")
        add("--batch-size", type=int, default=None, help="windows per micro-batch (default 8)")
        add("--train-seqlen", type=int, default=None, help="tokens per training window (default 256)")
        add("--grad-accum", type=int, default=None, help="micro-batches per step (default 1)")
        add("--warmup-steps", type=int, default=None, help="linear warm-up steps (default 10%% of steps)")
        add("--eval-every", type=int, default=None, help="held-out perplexity every N steps (default 50)")
        add("--eval-windows", type=int, default=None, help="held-out windows (default 8)")
        add("--max-minutes", type=float, default=None, help="wall-time budget for training")
        add("--train-text", default=None, help="training text source (default: the calibration-side text)")
        add("--seed", type=int, default=None)

    @staticmethod
    def params_from_cli(args: argparse.Namespace) -> dict[str, Any]:
        """The recipe's ``distill:`` mapping for the given options (only what was set)."""
        params = {key: getattr(args, key) for key in CLI_OPTIONS if getattr(args, key) is not None}
        if args.train_seqlen is not None:
            params["seqlen"] = args.train_seqlen
        if args.train_text is not None:
            params["text"] = args.train_text
        return params

    def apply(self, model: nn.Module, ctx: StepContext) -> dict[str, Any]:
        """Distil into ``model`` in place, or into a loaded student that ``ctx.take_model`` hands on."""
        started = time.perf_counter()
        student, report = run_step(model, self, ctx.teacher, ctx.tokenizer, ctx.default_text,
                                   on_progress=ctx.on_progress, cancel=ctx.cancel, on_step=ctx.on_step,
                                   load_options=ctx.load_options)
        if student is not model:
            ctx.handed_over = student
        student.eval()
        report["step_wall_s"] = time.perf_counter() - started
        return report
