"""Knowledge distillation: the spec, the students, the compatibility check and the recipe step.

A student learns to match a frozen teacher's softened next-token distribution (``core.distill_loss``)
in the training loop of ``core.distill_train``. The student is one of:

* ``self``        - the model being compressed (a pruned or quantized copy of the teacher): recovery.
                    Zeros of its block linear weights are held fixed by default (``hold_zeros``);
                    quantized layers train through their own grid and are re-packed at the end
                    (``core.distill_qat``), their zero codes held only with ``hold_zeros: true``.
* ``layer_drop``  - the model with whole decoder blocks removed (``keep_layers`` or ``keep_every``),
                    initialised from the kept blocks' weights (``core.structured`` does the surgery).
* ``width``       - the model with a share of its MLP channels removed (``width_fraction``).
* a model reference (``sample:student``, a folder, a Hub id) - a smaller model with the same tokenizer.

The teacher is ``base`` (the model the recipe started from, before any step) or a model reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from core import data, models
from core.distill_train import DistillReport, RecordFn, distill_, lr_at  # noqa: F401  (re-exported)
from core.errors import SpecError, TextSourceError
from core.evaluate import CancelFn, ProgressFn
from core.layers import decoder_blocks, param_count
from core.structured import StructuredSpec, prune_structured_

__all__ = ["DistillReport", "DistillSpec", "VocabularyMismatchError", "build_student_", "check_compatible",
           "distill_", "evenly_spaced_layers", "lr_at", "run_step", "training_data"]

BUILT_IN_STUDENTS = ("self", "layer_drop", "width")
HOLDOUT = "holdout"  # evaluate on the tail of the training text, kept out of training
POSSIBLE_STUDENTS = ("a layer-dropped copy of the teacher (student: layer_drop), a width-reduced copy "
                     "(student: width), the compressed model itself (student: self), or a model trained with the "
                     "teacher's tokenizer")


class VocabularyMismatchError(SpecError):
    """Teacher and student do not share a vocabulary, so their next-token distributions cannot be compared."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DistillSpec:
    """One distillation run; validated on creation, before any model is touched."""

    student: str = "self"  # self | layer_drop | width | a model reference with the teacher's tokenizer
    teacher: str = "base"  # base (the recipe's model before any step) or a model reference
    keep_layers: tuple[int, ...] | None = None  # layer_drop: the decoder blocks kept (0-based)
    keep_every: int | None = None  # layer_drop: keep blocks 0, k, 2k, ... (default 2 when keep_layers is not given)
    width_fraction: float | None = None  # width: share of MLP channels removed, in (0, 1)
    temperature: float = 2.0  # softens both distributions; T^2 keeps the gradient's scale
    alpha: float = 0.5  # weight of the KD term; 1 - alpha goes to next-token cross-entropy
    hidden_weight: float = 0.0  # > 0 adds MSE between hidden states (through a learned projection)
    hidden_layers: tuple[tuple[int, int], ...] | None = None  # (student block, teacher block); None: evenly spaced
    steps: int = 200  # optimizer steps
    lr: float = 1e-4  # peak learning rate (after warm-up, before the cosine decay)
    batch_size: int = 8  # windows per micro-batch
    seqlen: int = 256  # tokens per window (cut to the models' context)
    grad_accum: int = 1  # micro-batches per optimizer step
    warmup_steps: int | None = None  # None: 10% of steps
    eval_every: int = 50  # held-out perplexity every N steps (0: only before and after training)
    eval_windows: int = 8  # held-out windows of seqlen tokens
    eval_text: str = HOLDOUT  # holdout (tail of the training text) or a text source
    max_minutes: float | None = None  # wall-time budget; stops after the step that crosses it
    keep_best: bool = True  # end with the weights of the best held-out perplexity (False: the last weights)
    text: str = "default"  # training text source; default: the model's calibration-side text
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0  # max gradient norm; None: no clipping
    hold_zeros: bool | None = None  # keep zero weights at zero; None: yes for student "self"
    mixed_precision: bool = True  # CUDA only: autocast to bf16 (fp16 where bf16 is missing)
    seed: int = 0  # batch order and projection initialisation

    def __post_init__(self) -> None:
        self._check_models()
        self._check_loss()
        self._check_schedule()
        self._check_data()

    def _check_models(self) -> None:
        _require(isinstance(self.student, str) and bool(self.student.strip()),
                 f"student must be self, layer_drop, width or a model reference, got {self.student!r}")
        _require(isinstance(self.teacher, str) and bool(self.teacher.strip()),
                 f"teacher must be base or a model reference, got {self.teacher!r}")
        layer_drop = self.student == "layer_drop"
        _require(layer_drop or (self.keep_layers is None and self.keep_every is None),
                 f"keep_layers / keep_every choose the blocks of a layer-dropped student; they need "
                 f"student: layer_drop, not {self.student!r}")
        _require(self.keep_layers is None or self.keep_every is None, "give keep_layers or keep_every, not both")
        if layer_drop and self.keep_layers is None and self.keep_every is None:
            object.__setattr__(self, "keep_every", 2)
        if self.keep_layers is not None:
            keep = self.keep_layers
            ok = isinstance(keep, Sequence) and not isinstance(keep, str) and len(keep) > 0
            _require(ok and all(_is_count(i, 0) for i in keep) and len(set(keep)) == len(keep),
                     f"keep_layers must be a non-empty list of distinct block indices (from 0), got {keep!r}")
            object.__setattr__(self, "keep_layers", tuple(sorted(keep)))
        _require(self.keep_every is None or _is_count(self.keep_every, 2),
                 f"keep_every must be a whole number >= 2 (2 keeps every other block), got {self.keep_every!r}")
        width = self.student == "width"
        _require(width == (self.width_fraction is not None),
                 "width_fraction (the share of MLP channels removed, e.g. 0.5) goes with student: width, and "
                 f"student: width needs it; got student {self.student!r}, width_fraction {self.width_fraction!r}")
        _require(not width or (_is_number(self.width_fraction) and 0 < self.width_fraction < 1),
                 f"width_fraction must be a number strictly between 0 and 1, got {self.width_fraction!r}")
        _require(self.hold_zeros is None or isinstance(self.hold_zeros, bool),
                 f"hold_zeros must be true, false or omitted, got {self.hold_zeros!r}")

    def _check_loss(self) -> None:
        _require(_is_number(self.temperature) and self.temperature > 0,
                 f"temperature must be a number > 0 (1 leaves the distributions as they are, 2-4 is usual), "
                 f"got {self.temperature!r}")
        _require(_is_number(self.alpha) and 0 <= self.alpha <= 1,
                 f"alpha must be in [0, 1] (1: only the teacher's distribution, 0: only the next tokens), "
                 f"got {self.alpha!r}")
        _require(_is_number(self.hidden_weight) and self.hidden_weight >= 0,
                 f"hidden_weight must be a number >= 0 (0: no hidden-state term), got {self.hidden_weight!r}")
        if self.hidden_layers is not None:
            pairs = self.hidden_layers
            ok = isinstance(pairs, Sequence) and len(pairs) > 0 and all(
                isinstance(p, Sequence) and len(p) == 2 and all(_is_count(i, 0) for i in p) for p in pairs)
            _require(ok, f"hidden_layers must be a list of [student block, teacher block] pairs, got {pairs!r}")
            object.__setattr__(self, "hidden_layers", tuple((int(s), int(t)) for s, t in pairs))

    def _check_schedule(self) -> None:
        _require(_is_count(self.steps, 1), f"steps must be a whole number >= 1 (optimizer steps), got {self.steps!r}")
        _require(_is_number(self.lr) and 0 < self.lr < 1,
                 f"lr must be a number in (0, 1), e.g. 1e-4; got {self.lr!r}")
        if self.warmup_steps is None:
            object.__setattr__(self, "warmup_steps", self.steps // 10)
        _require(_is_count(self.warmup_steps, 0) and self.warmup_steps <= self.steps,
                 f"warmup_steps must be a whole number from 0 to steps ({self.steps}), got {self.warmup_steps!r}")
        _require(_is_count(self.eval_every, 0),
                 f"eval_every must be a whole number >= 0 (0: evaluate only before and after), got {self.eval_every!r}")
        _require(self.max_minutes is None or (_is_number(self.max_minutes) and self.max_minutes > 0),
                 f"max_minutes must be a number > 0 or omitted (no time limit), got {self.max_minutes!r}")
        _require(_is_number(self.weight_decay) and self.weight_decay >= 0,
                 f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        _require(self.clip_norm is None or (_is_number(self.clip_norm) and self.clip_norm > 0),
                 f"clip_norm must be a number > 0 or omitted (no clipping), got {self.clip_norm!r}")
        for name in ("mixed_precision", "keep_best"):
            value = getattr(self, name)
            _require(isinstance(value, bool), f"{name} must be true or false, got {value!r}")

    def _check_data(self) -> None:
        for name, minimum in (("batch_size", 1), ("seqlen", 2), ("grad_accum", 1), ("eval_windows", 1), ("seed", 0)):
            value = getattr(self, name)
            _require(_is_count(value, minimum), f"{name} must be a whole number >= {minimum}, got {value!r}")
        for name in ("text", "eval_text"):
            value = getattr(self, name)
            _require(isinstance(value, str) and bool(value.strip()), f"{name} must be a text source, got {value!r}")
        if self.eval_text != HOLDOUT:
            data.check_source(self.eval_text)
        data.check_source(self.text)

    @classmethod
    def from_dict(cls, params: Mapping) -> DistillSpec:
        """Build from a recipe's ``distill:`` mapping; unknown keys are refused by name."""
        _require(isinstance(params, Mapping), f"distill parameters must be a mapping, got {params!r}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(params) - set(allowed), key=str)
        _require(not unknown, f"unknown distill parameter(s) {', '.join(map(str, unknown))}; "
                              f"allowed: {', '.join(allowed)}")
        return cls(**params)

    @property
    def holds_zeros(self) -> bool:
        """Whether zeros of the student's block linear weights stay zero during training."""
        return self.student == "self" if self.hold_zeros is None else self.hold_zeros

    @property
    def needs_calibration(self) -> bool:
        return False  # the step reads its own training text

    @property
    def label(self) -> str:
        """Short description for charts and tables, e.g. 'distill layer_drop 1/2 T=2 a=0.5 200 steps'."""
        student = self.student
        if student == "layer_drop":
            student += f" keep {list(self.keep_layers)}" if self.keep_layers else f" keep 1/{self.keep_every}"
        elif student == "width":
            student += f" -{self.width_fraction:.0%} MLP"
        return f"distill {student} T={self.temperature:g} a={self.alpha:g} {self.steps} steps"


# ---- students ------------------------------------------------------------------------------


def evenly_spaced_layers(total: int, count: int) -> tuple[int, ...]:
    """``count`` block indices out of ``total``, evenly spread, always with the first and the last."""
    _require(1 <= count <= total, f"cannot keep {count} of {total} blocks; keep between 1 and {total}")
    if count == 1:
        return (total - 1,)
    return tuple(sorted({int(i * (total - 1) / (count - 1) + 0.5) for i in range(count)}))


def kept_layers(spec: DistillSpec, total: int) -> tuple[int, ...]:
    """The blocks a layer-dropped student keeps, checked against the model's ``total`` blocks."""
    keep = spec.keep_layers if spec.keep_layers is not None else tuple(range(0, total, spec.keep_every))
    _require(keep[-1] < total, f"keep_layers {list(keep)} names a block past the last one (blocks 0..{total - 1})")
    _require(len(keep) < total, f"keep_layers {list(keep)} keeps all {total} blocks, so nothing is dropped; "
                                f"keep fewer blocks or use student: self")
    return keep


def build_student_(model: nn.Module, spec: DistillSpec) -> tuple[nn.Module, str]:
    """(student, description) for the built-in kinds, made from ``model`` IN PLACE (the pipeline's copy).

    ``layer_drop`` and ``width`` reuse ``core.structured``: the config is updated and the student
    starts from the kept weights. Model-reference students are loaded by ``load_student``.
    """
    if spec.student == "self":
        return model, "the model itself"
    if spec.student == "layer_drop":
        total = len(decoder_blocks(model)[1])
        keep = kept_layers(spec, total)
        drop = tuple(i for i in range(total) if i not in keep)
        prune_structured_(model, StructuredSpec(target="layers", layers=drop))
        return model, f"layer-dropped copy keeping blocks {list(keep)} of {total}"
    if spec.student == "width":
        report = prune_structured_(model, StructuredSpec(target="mlp_channels", fraction=spec.width_fraction))
        return model, f"width-reduced copy ({report.config_changes})"
    raise SpecError(f"student {spec.student!r} is a model reference; load it with load_student")


def load_student(ref: str, like: nn.Module) -> models.LoadedModel:
    """Load a model-reference student (or teacher) on the device and in the dtype of ``like``."""
    parameter = next(like.parameters())
    dtype = {v: k for k, v in models.DTYPES.items()}.get(parameter.dtype)
    return models.load(ref, device=str(parameter.device), dtype=dtype)


def _vocab_rows(model: nn.Module) -> int:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def check_compatible(teacher: nn.Module, student: nn.Module, teacher_tokenizer: Any = None,
                     student_tokenizer: Any = None) -> list[str]:
    """Refuse a pair whose vocabularies differ; warn (and return a note) when the student is larger."""
    teacher_vocab, student_vocab = _vocab_rows(teacher), _vocab_rows(student)
    same_tokens = True
    if teacher_tokenizer is not None and student_tokenizer is not None:
        same_tokens = teacher_tokenizer.get_vocab() == student_tokenizer.get_vocab()
    if teacher_vocab != student_vocab or not same_tokens:
        detail = (f"the teacher predicts over {teacher_vocab} tokens and the student over {student_vocab}"
                  if teacher_vocab != student_vocab else "the two tokenizers map text to different token ids")
        raise VocabularyMismatchError(
            f"teacher and student do not share a vocabulary ({detail}); distillation compares their "
            f"next-token distributions token by token. Possible students: {POSSIBLE_STUDENTS}")
    notes = []
    teacher_params, student_params = param_count(teacher), param_count(student)
    if student_params > teacher_params:
        note = (f"the student has more parameters ({student_params:,}) than the teacher ({teacher_params:,}); "
                "distillation usually trains a smaller model")
        warnings.warn(note, UserWarning, stacklevel=2)
        notes.append(note)
    return notes


# ---- data ----------------------------------------------------------------------------------


def training_data(tokenizer: Any, spec: DistillSpec, seqlen: int,
                  default_text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(training token ids [n], held-out windows [eval_windows, seqlen]) checked before training starts.

    With ``eval_text: holdout`` the held-out windows are the tail of the training text and are removed
    from what training draws from, so the checkpoint is chosen on text the student never saw.
    """
    ids = data.tokenize(tokenizer, data.load_text(spec.text, default=default_text).text)
    needed = spec.batch_size * seqlen
    if spec.eval_text == HOLDOUT:
        held = spec.eval_windows * seqlen
        if ids.numel() < needed + held:
            raise TextSourceError(
                f"the training text {spec.text!r} has {ids.numel():,} tokens; one batch needs batch_size x seqlen = "
                f"{spec.batch_size} x {seqlen} = {needed:,} and the held-out tail {spec.eval_windows} x {seqlen} = "
                f"{held:,}; use a longer text, or a smaller batch_size, seqlen or eval_windows")
        return ids[: ids.numel() - held], ids[ids.numel() - held:].view(spec.eval_windows, seqlen)
    if ids.numel() < needed:
        raise TextSourceError(
            f"the training text {spec.text!r} has {ids.numel():,} tokens but one batch needs batch_size x seqlen = "
            f"{spec.batch_size} x {seqlen} = {needed:,}; use a longer text or a smaller batch_size or seqlen")
    eval_ids = data.tokenize(tokenizer, data.load_text(spec.eval_text, default=default_text).text)
    return ids, data.windows(eval_ids, seqlen, spec.eval_windows)


def _context_length(model: nn.Module) -> int:
    """Positions the model can attend over (as ``LoadedModel.context_length`` reads them)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


# ---- the recipe step -----------------------------------------------------------------------


def _teacher_for(spec: DistillSpec, base: nn.Module | None, tokenizer: Any, like: nn.Module) -> tuple[nn.Module, Any]:
    """(teacher, its tokenizer): the recipe's base model, or the model ``spec.teacher`` names."""
    if spec.teacher != "base":
        loaded = load_student(spec.teacher, like)
        return loaded.model, loaded.tokenizer
    _require(base is not None, "distillation with teacher: base needs the recipe's base model; run it as a "
                               "recipe step, or name the teacher (teacher: sample:teacher)")
    return base, tokenizer


def run_step(model: nn.Module, spec: DistillSpec, teacher: nn.Module | None, tokenizer: Any, default_text: str,
             on_progress: ProgressFn | None = None, cancel: CancelFn | None = None,
             on_step: RecordFn | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Distil into ``model`` (in place) or into a loaded student; returns (the trained model, the report).

    ``teacher`` is the recipe's base model (never modified); ``spec.teacher`` may name another model.
    ``tokenizer`` is the base model's; a loaded student or teacher must map text to the same ids.
    The training text is checked before ``model`` is changed in any way.
    """
    teacher, teacher_tokenizer = _teacher_for(spec, teacher, tokenizer, model)
    loaded = None if spec.student in BUILT_IN_STUDENTS else load_student(spec.student, model)
    student_tokenizer = loaded.tokenizer if loaded is not None else tokenizer
    seqlen = min(spec.seqlen, _context_length(teacher), _context_length(loaded.model if loaded else model))
    train_ids, eval_windows = training_data(student_tokenizer, spec, seqlen, default_text)
    student, description = (loaded.model, spec.student) if loaded is not None else build_student_(model, spec)
    notes = check_compatible(teacher, student, teacher_tokenizer, student_tokenizer)
    if seqlen < spec.seqlen:
        notes.append(f"seqlen {spec.seqlen} cut to the models' context, {seqlen}")
    if next(student.parameters()).dtype in (torch.float16, torch.bfloat16):
        notes.append("the student's weights are 16-bit, so updates smaller than their precision are lost; load the "
                     "model in fp32 (dtype: fp32) to train fp32 weights under autocast")
    report = distill_(student, teacher, spec, train_ids, eval_windows, on_progress=on_progress, cancel=cancel,
                      on_step=on_step)
    result = report.as_dict()
    result.update(student=description, teacher=spec.teacher, notes=notes + result["notes"], kind="distill",
                  label=spec.label)
    return student, result
