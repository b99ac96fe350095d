"""``DistillSpec``: one distillation run (student, teacher, loss, schedule, data), validated on creation.

In a recipe::

    steps:
      - prune: {method: magnitude, sparsity: 0.5}
      - distill: {student: self, temperature: 2.0, alpha: 0.5, steps: 100, lr: 3e-4, batch_size: 8, seqlen: 256}

The student is ``self`` (the model being compressed), ``layer_drop`` (decoder blocks removed),
``width`` (MLP channels removed) or a model reference with the teacher's tokenizer; the teacher is
``base`` (the recipe's model before any step) or a model reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core import data
from core.checks import checked_params, is_count, is_number, require

if TYPE_CHECKING:
    from core.models.device import ModelDims

BUILT_IN_STUDENTS = ("self", "layer_drop", "width")

HOLDOUT = "holdout"  # evaluate on the tail of the training text, kept out of training

# Every step keeps a record (losses, learning rate, gradient norm, speed) in memory while training (about 480
# bytes) and in the result row's details (about 220 bytes of JSON; SQLite holds at most 1 GB in one value).
STEP_RECORD_BYTES = 700
MAX_STEPS = 1_000_000
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes at most a 64-bit seed


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
        require(isinstance(self.student, str) and bool(self.student.strip()),
                f"student must be self, layer_drop, width or a model reference, got {self.student!r}")
        require(isinstance(self.teacher, str) and bool(self.teacher.strip()),
                f"teacher must be base or a model reference, got {self.teacher!r}")
        layer_drop = self.student == "layer_drop"
        require(layer_drop or (self.keep_layers is None and self.keep_every is None),
                f"keep_layers / keep_every choose the blocks of a layer-dropped student; they need "
                f"student: layer_drop, not {self.student!r}")
        require(self.keep_layers is None or self.keep_every is None, "give keep_layers or keep_every, not both")
        if layer_drop and self.keep_layers is None and self.keep_every is None:
            object.__setattr__(self, "keep_every", 2)
        if self.keep_layers is not None:
            keep = self.keep_layers
            ok = isinstance(keep, Sequence) and not isinstance(keep, str) and len(keep) > 0
            require(ok and all(is_count(i, 0) for i in keep) and len(set(keep)) == len(keep),
                    f"keep_layers must be a non-empty list of distinct block indices (from 0), got {keep!r}")
            object.__setattr__(self, "keep_layers", tuple(sorted(keep)))
        require(self.keep_every is None or is_count(self.keep_every, 2),
                f"keep_every must be a whole number >= 2 (2 keeps every other block), got {self.keep_every!r}")
        width = self.student == "width"
        require(width == (self.width_fraction is not None),
                "width_fraction (the share of MLP channels removed, e.g. 0.5) goes with student: width, and "
                f"student: width needs it; got student {self.student!r}, width_fraction {self.width_fraction!r}")
        require(not width or (is_number(self.width_fraction) and 0 < self.width_fraction < 1),
                f"width_fraction must be a number strictly between 0 and 1, got {self.width_fraction!r}")
        require(self.hold_zeros is None or isinstance(self.hold_zeros, bool),
                f"hold_zeros must be true, false or omitted, got {self.hold_zeros!r}")

    def _check_loss(self) -> None:
        require(is_number(self.temperature) and self.temperature > 0,
                f"temperature must be a number > 0 (1 leaves the distributions as they are, 2-4 is usual), "
                f"got {self.temperature!r}")
        require(is_number(self.alpha) and 0 <= self.alpha <= 1,
                f"alpha must be in [0, 1] (1: only the teacher's distribution, 0: only the next tokens), "
                f"got {self.alpha!r}")
        require(is_number(self.hidden_weight) and self.hidden_weight >= 0,
                f"hidden_weight must be a number >= 0 (0: no hidden-state term), got {self.hidden_weight!r}")
        if self.hidden_layers is not None:
            pairs = self.hidden_layers
            ok = isinstance(pairs, Sequence) and len(pairs) > 0 and all(
                isinstance(p, Sequence) and len(p) == 2 and all(is_count(i, 0) for i in p) for p in pairs)
            require(ok, f"hidden_layers must be a list of [student block, teacher block] pairs, got {pairs!r}")
            object.__setattr__(self, "hidden_layers", tuple((int(s), int(t)) for s, t in pairs))

    def _check_schedule(self) -> None:
        require(is_count(self.steps, 1), f"steps must be a whole number >= 1 (optimizer steps), got {self.steps!r}")
        require(self.steps <= MAX_STEPS,
                f"steps={self.steps:,} is more than {MAX_STEPS:,}: every step keeps a record of about "
                f"{STEP_RECORD_BYTES} bytes in memory and in the result row "
                f"(≈ {self.steps * STEP_RECORD_BYTES / 1e9:,.1f} GB here); use at most {MAX_STEPS:,} steps, "
                "and max_minutes to stop on time")
        require(is_number(self.lr) and 0 < self.lr < 1,
                f"lr must be a number in (0, 1), e.g. 1e-4; got {self.lr!r}")
        if self.warmup_steps is None:
            object.__setattr__(self, "warmup_steps", self.steps // 10)
        require(is_count(self.warmup_steps, 0) and self.warmup_steps <= self.steps,
                f"warmup_steps must be a whole number from 0 to steps ({self.steps}), got {self.warmup_steps!r}")
        require(is_count(self.eval_every, 0),
                f"eval_every must be a whole number >= 0 (0: evaluate only before and after), got {self.eval_every!r}")
        require(self.max_minutes is None or (is_number(self.max_minutes) and self.max_minutes > 0),
                f"max_minutes must be a number > 0 or omitted (no time limit), got {self.max_minutes!r}")
        require(is_number(self.weight_decay) and self.weight_decay >= 0,
                f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        require(self.clip_norm is None or (is_number(self.clip_norm) and self.clip_norm > 0),
                f"clip_norm must be a number > 0 or omitted (no clipping), got {self.clip_norm!r}")
        for name in ("mixed_precision", "keep_best"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"{name} must be true or false, got {value!r}")

    def _check_data(self) -> None:
        for name, minimum in (("batch_size", 1), ("seqlen", 2), ("grad_accum", 1), ("eval_windows", 1), ("seed", 0)):
            value = getattr(self, name)
            require(is_count(value, minimum), f"{name} must be a whole number >= {minimum}, got {value!r}")
        require(self.seed <= MAX_SEED, f"seed must be at most 2^64 - 1, got {self.seed!r}")
        for name in ("text", "eval_text"):
            value = getattr(self, name)
            require(isinstance(value, str) and bool(value.strip()), f"{name} must be a text source, got {value!r}")
        if self.eval_text != HOLDOUT:
            data.check_source(self.eval_text)
        data.check_source(self.text)

    @classmethod
    def from_dict(cls, params: Mapping) -> DistillSpec:
        """Build from a recipe's ``distill:`` mapping; unknown keys are refused by name."""
        return cls(**checked_params(cls, params, "distill"))

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


def training_bytes_per_window(seqlen: int, student: ModelDims, teacher: ModelDims, hidden_states: bool) -> int:
    """Bytes one training window of ``seqlen`` tokens adds to a step (a conservative estimate).

    The student's activations kept for the backward pass (per block and token about ten hidden-sized and four
    inner-width values, plus the [heads, seqlen, seqlen] attention scores), its fp32 logits with the softened
    distributions and their gradients (about six [seqlen, vocab] tensors), the teacher's forward (nothing kept)
    and, with a hidden-state term, every block output of both models.
    """
    s = student
    kept = s.layers * seqlen * (10 * s.hidden + 4 * s.widest + s.heads * seqlen) * s.element_bytes
    logits = 6 * seqlen * s.vocab * 4
    teacher_forward = seqlen * (4 * teacher.widest + teacher.heads * seqlen) * teacher.element_bytes
    hidden = 4 * seqlen * ((s.layers + 1) * s.hidden + (teacher.layers + 1) * teacher.hidden) if hidden_states else 0
    return kept + logits + teacher_forward + hidden


def training_fixed_bytes(student: ModelDims) -> int:
    """Bytes training needs whatever the batch: fp32 gradients, AdamW's two moments and the best checkpoint's copy
    of the student's weights."""
    return student.params * 4 * 4
