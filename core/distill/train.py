"""The distillation training loop: AdamW, warm-up + cosine, accumulation, clipping, best checkpoint.

``distill_`` trains a student in place against a frozen teacher. A quantized student trains through
its own grid and is re-packed at the end (``core.distill.qat``). Before the first step, every
``eval_every`` steps and at the end it measures held-out perplexity and keeps a copy of the best
weights, which are restored when training ends: completed, cancelled (``cancel()`` is asked before
every step; the weights trained since the last evaluation are measured then, so they can be the ones
kept) or out of its wall-time budget. Each step leaves a record (loss terms, learning rate,
gradient norm, tokens/s, perplexity when measured) in the report and, live, in ``on_step``.

On CUDA the forward passes run under ``torch.autocast`` (bf16, or fp16 with a gradient scaler);
the loss itself is computed in float32 either way.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from core.distill.loss import LossParts, distill_loss, hidden_mse
from core.distill.qat import FakeQuantLinear, fake_quantize_, repack_
from core.errors import SpecError
from core.evaluate.quality import evaluate_quality
from core.layers import block_linear_layers, decoder_blocks, param_count
from core.progress import CancelFn, ProgressFn

if TYPE_CHECKING:
    from core.distill.spec import DistillSpec

RecordFn = Callable[[dict[str, Any]], None]  # receives each StepRecord as a plain dict
MIN_LR_RATIO = 0.1  # the cosine ends at this share of the peak learning rate


def lr_at(step: int, steps: int, warmup: int, peak: float, floor_ratio: float = MIN_LR_RATIO) -> float:
    """Learning rate of optimizer step ``step`` (0-based) of ``steps``: linear warm-up over ``warmup``
    steps to ``peak``, then a cosine down to ``floor_ratio * peak`` at the last step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    floor = peak * floor_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StepRecord:
    """One point of the training curve; step 0 is the evaluation before training (no losses)."""

    step: int
    elapsed_s: float
    loss: float | None = None
    kd: float | None = None
    ce: float | None = None
    hidden: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    eval_perplexity: float | None = None


@dataclass
class DistillReport:
    """What a distillation run did; ``stopped`` is "completed", "cancelled" or "time budget"."""

    steps_planned: int
    steps_done: int
    stopped: str
    best_step: int | None  # the weights the student ends with, unless keep_best was off
    best_perplexity: float | None
    initial_perplexity: float | None
    last_perplexity: float | None  # at the last evaluation, before the best weights were restored
    eval_windows: int
    seqlen: int
    train_tokens: int  # tokens the student was trained on (with repeats)
    tokens_per_s: float
    wall_s: float
    hold_zeros: bool
    precision: str
    device: str
    student_params: int
    teacher_params: int
    curve: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return self.stopped == "cancelled"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cancelled": self.cancelled}


def zero_masks(model: nn.Module, quantized: bool = False) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """(weight, keep mask) of every decoder-block linear layer that holds zeros (a dense one needs none).

    Quantized layers (``FakeQuantLinear``) are left out unless ``quantized``: their zeros are mostly
    weights that rounded to the zero point, which training should be free to move.
    """
    masks = []
    for _, layer in block_linear_layers(model):
        if isinstance(layer, FakeQuantLinear) and not quantized:
            continue
        keep = layer.weight.detach() != 0
        if not bool(keep.all()):
            masks.append((layer.weight, keep))
    return masks


def hidden_pairs(student_blocks: int, teacher_blocks: int) -> tuple[tuple[int, int], ...]:
    """Student block i matched to the teacher block at the same relative depth (the last to the last)."""
    return tuple((i, round((i + 1) * teacher_blocks / student_blocks) - 1) for i in range(student_blocks))


class HiddenMatch(nn.Module):
    """The hidden-state term: MSE between block outputs, through a learned projection when widths differ."""

    def __init__(self, pairs: tuple[tuple[int, int], ...], student_width: int, teacher_width: int, seed: int) -> None:
        super().__init__()
        self.pairs = pairs
        self.projections: nn.ModuleList | None = None
        if student_width != teacher_width:
            with torch.random.fork_rng(devices=[]):  # a seeded init without touching the global generator
                torch.manual_seed(seed)
                self.projections = nn.ModuleList(nn.Linear(student_width, teacher_width, bias=False) for _ in pairs)

    def loss(self, student_states: tuple[torch.Tensor, ...], teacher_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Mean over pairs; ``*_states[k]`` [b, t, d] is the output of block k - 1 (0: the embeddings)."""
        terms = [hidden_mse(student_states[s + 1], teacher_states[t + 1],
                            self.projections[i] if self.projections is not None else None)
                 for i, (s, t) in enumerate(self.pairs)]
        return torch.stack(terms).mean()


def _hidden_match(student: nn.Module, teacher: nn.Module, spec: DistillSpec, device: torch.device) -> HiddenMatch:
    n_s, n_t = len(decoder_blocks(student)[1]), len(decoder_blocks(teacher)[1])
    pairs = spec.hidden_layers or hidden_pairs(n_s, n_t)
    bad = [p for p in pairs if p[0] >= n_s or p[1] >= n_t]
    if bad:
        raise SpecError(f"hidden_layers {[list(p) for p in bad]} name blocks that do not exist (student blocks "
                        f"0..{n_s - 1}, teacher blocks 0..{n_t - 1})")
    widths = (student.config.hidden_size, teacher.config.hidden_size)
    return HiddenMatch(tuple(pairs), *widths, seed=spec.seed).to(device)


def _amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype on CUDA (bf16 where supported, else fp16); None elsewhere or when disabled."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Put ``model`` in train / eval mode for a while and restore its mode after (no net change)."""
    was = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(was)


class _Trainer:
    """The optimizer, the held masks and the batch sampler of one run."""

    def __init__(self, student: nn.Module, teacher: nn.Module, spec: DistillSpec, train_ids: torch.Tensor,
                 seqlen: int, bos: int | None = None) -> None:
        self.student, self.teacher, self.spec, self.ids, self.seqlen = student, teacher, spec, train_ids, seqlen
        self.bos = bos
        self.device = next(student.parameters()).device
        # quantized layers hold their zeros only when asked outright (hold_zeros: true)
        self.masks = zero_masks(student, quantized=spec.hold_zeros is True) if spec.holds_zeros else []
        self.hidden = _hidden_match(student, teacher, spec, self.device) if spec.hidden_weight > 0 else None
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.params += list(self.hidden.parameters()) if self.hidden is not None else []
        self.optimizer = torch.optim.AdamW(self.params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.amp = _amp_dtype(self.device, spec.mixed_precision)
        # fp16 gradients of fp32 weights underflow without scaling; bf16 has fp32's range and needs none
        fp32_weights = all(p.dtype == torch.float32 for p in self.params)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16 and fp32_weights)
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.needs_teacher = spec.alpha > 0 or spec.hidden_weight > 0  # alpha 0: plain next-token training

    @property
    def precision(self) -> str:
        dtype = str(next(self.student.parameters()).dtype).replace("torch.", "")
        return f"{dtype} weights, autocast {str(self.amp).replace('torch.', '')}" if self.amp else dtype

    def _batch(self) -> torch.Tensor:
        """``batch_size`` random windows of the training ids: [b, seqlen] (seeded, so runs repeat); with a BOS,
        each is <bos> + seqlen - 1 drawn tokens, as the model saw its inputs start in training."""
        drawn = self.seqlen - (self.bos is not None)
        starts = torch.randint(0, self.ids.numel() - drawn + 1, (self.spec.batch_size,), generator=self.generator)
        batch = torch.stack([self.ids[s : s + drawn] for s in starts.tolist()])
        if self.bos is not None:
            batch = torch.cat([torch.full((batch.shape[0], 1), self.bos, dtype=batch.dtype), batch], dim=1)
        return batch.to(self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _loss(self, batch: torch.Tensor) -> LossParts:
        hidden_states = self.hidden is not None
        teacher_out = None
        if self.needs_teacher:
            with torch.no_grad(), self._autocast():
                teacher_out = self.teacher(input_ids=batch, use_cache=False, output_hidden_states=hidden_states)
        with self._autocast():
            student_out = self.student(input_ids=batch, use_cache=False, output_hidden_states=hidden_states)
        hidden = self.hidden.loss(student_out.hidden_states, teacher_out.hidden_states) if hidden_states else None
        teacher_logits = teacher_out.logits if teacher_out is not None else student_out.logits
        return distill_loss(student_out.logits, teacher_logits, batch, self.spec.temperature, self.spec.alpha,
                            hidden=hidden, hidden_weight=self.spec.hidden_weight)

    def _update(self) -> float:
        """Mask, clip and apply the accumulated gradients; re-zero held weights. Returns the gradient norm."""
        self.scaler.unscale_(self.optimizer)
        for weight, keep in self.masks:
            if weight.grad is not None:
                weight.grad.mul_(keep)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.spec.clip_norm or math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            for weight, keep in self.masks:  # AdamW's decoupled weight decay would otherwise touch them
                weight.mul_(keep)
        return float(norm)

    def step(self, index: int, elapsed_s: float) -> StepRecord:
        """One optimizer step over ``grad_accum`` micro-batches."""
        started, spec = time.perf_counter(), self.spec
        lr = lr_at(index, spec.steps, spec.warmup_steps, spec.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        sums = dict.fromkeys(("loss", "kd", "ce", "hidden"), 0.0)
        for _ in range(spec.grad_accum):
            parts = self._loss(self._batch())
            self.scaler.scale(parts.total / spec.grad_accum).backward()
            for name, value in (("loss", float(parts.total.detach())), ("kd", parts.kd), ("ce", parts.ce),
                                ("hidden", parts.hidden)):
                sums[name] += value / spec.grad_accum
        grad_norm = self._update()
        seconds = time.perf_counter() - started
        return StepRecord(step=index + 1, elapsed_s=elapsed_s + seconds, lr=lr, grad_norm=grad_norm,
                          tokens_per_s=spec.batch_size * self.seqlen * spec.grad_accum / seconds, **sums)

    def perplexity(self, windows: torch.Tensor) -> float:
        with _mode(self.student, False):
            return evaluate_quality(self.student, windows).perplexity


class _Best:
    """The lowest held-out perplexity so far and a copy of the student's weights at that point."""

    def __init__(self) -> None:
        self.step: int | None = None
        self.perplexity = math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, step: int, perplexity: float, model: nn.Module) -> None:
        if perplexity < self.perplexity:  # NaN never wins
            self.step, self.perplexity = step, perplexity
            self.state = {name: t.detach().clone() for name, t in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


def _should_evaluate(done: int, spec: DistillSpec) -> bool:
    return done == spec.steps or (spec.eval_every > 0 and done % spec.eval_every == 0)


@dataclass
class _Progress:
    """Where the loop stands: how it stopped, steps done, training seconds, the last perplexity."""

    stopped: str = "completed"
    done: int = 0
    train_s: float = 0.0
    last_perplexity: float | None = None


def _train(trainer: _Trainer, best: _Best, eval_windows: torch.Tensor, emit: Callable[[StepRecord], None],
           on_progress: ProgressFn | None, cancel: CancelFn | None, started: float) -> _Progress:
    """The step loop: cancel is asked before each step; the time budget is checked after each."""
    spec, state = trainer.spec, _Progress()
    for index in range(spec.steps):
        if cancel is not None and cancel():
            state.stopped = "cancelled"
            _measure_last(trainer, best, eval_windows, emit, state)
            break
        record = trainer.step(index, state.train_s)
        state.train_s, state.done = record.elapsed_s, index + 1
        if spec.max_minutes is not None and time.perf_counter() - started >= 60 * spec.max_minutes \
                and state.done < spec.steps:
            state.stopped = "time budget"
        if _should_evaluate(state.done, spec) or state.stopped == "time budget":
            state.last_perplexity = trainer.perplexity(eval_windows)
            record = replace(record, eval_perplexity=state.last_perplexity)
            best.offer(state.done, state.last_perplexity, trainer.student)
        emit(record)
        if on_progress is not None:
            on_progress("distill", state.done / spec.steps)
        if state.stopped != "completed":
            break
    return state


def _measure_last(trainer: _Trainer, best: _Best, eval_windows: torch.Tensor, emit: Callable[[StepRecord], None],
                  state: _Progress) -> None:
    """On a cancel: the held-out perplexity of the latest weights, if no evaluation has seen them yet, so that the
    steps trained since the last evaluation can be the ones kept (an evaluation-only record joins the curve)."""
    if state.done == 0 or _should_evaluate(state.done, trainer.spec):
        return
    state.last_perplexity = trainer.perplexity(eval_windows)
    best.offer(state.done, state.last_perplexity, trainer.student)
    emit(StepRecord(step=state.done, elapsed_s=state.train_s, eval_perplexity=state.last_perplexity))


def distill_(student: nn.Module, teacher: nn.Module, spec: DistillSpec, train_ids: torch.Tensor,
             eval_windows: torch.Tensor, on_progress: ProgressFn | None = None, cancel: CancelFn | None = None,
             on_step: RecordFn | None = None, bos: int | None = None) -> DistillReport:
    """Train ``student`` IN PLACE to match ``teacher`` (never modified; run in eval mode without gradients).

    ``train_ids`` [n] are the training token ids (random windows of ``eval_windows.shape[1]`` tokens are
    drawn from them; with ``bos``, the id of a BOS the tokenizer adds, each window is it and ``seqlen - 1``
    drawn tokens, as ``core.data.windows`` cuts the held-out ones); ``eval_windows`` [w, seqlen] are the
    held-out windows the best checkpoint is chosen on. The student ends with the best weights seen and in the
    train/eval mode it came in. A quantized student trains through its grid and ends packed again, with the
    same scheme and scales.
    """
    started, seqlen = time.perf_counter(), int(eval_windows.shape[1])
    quantized = fake_quantize_(student)  # [] for a float student
    try:
        trainer = _Trainer(student, teacher, spec, train_ids, seqlen, bos)
        return _distill(trainer, eval_windows, started, quantized, on_progress, cancel, on_step)
    finally:
        repack_(student, quantized)


def _distill(trainer: _Trainer, eval_windows: torch.Tensor, started: float, quantized: list[str],
             on_progress: ProgressFn | None, cancel: CancelFn | None, on_step: RecordFn | None) -> DistillReport:
    student, teacher, spec, seqlen = trainer.student, trainer.teacher, trainer.spec, trainer.seqlen
    best, curve = _Best(), []

    def emit(record: StepRecord) -> None:
        curve.append(asdict(record))
        if on_step is not None:
            on_step(asdict(record))

    initial = trainer.perplexity(eval_windows)
    best.offer(0, initial, student)
    emit(StepRecord(step=0, elapsed_s=0.0, eval_perplexity=initial))
    with _mode(teacher, False), _mode(student, True):
        state = _train(trainer, best, eval_windows, emit, on_progress, cancel, started)
    if spec.keep_best:
        best.restore(student)
    done, tokens = state.done, state.done * spec.grad_accum * spec.batch_size * seqlen
    kept = best.step if spec.keep_best else done
    notes = [] if state.stopped == "completed" else [
        f"stopped after {done} of {spec.steps} steps ({state.stopped}); kept the weights of step {kept}"]
    if quantized:
        notes.append(f"{len(quantized)} quantized layers trained as fp32 latent weights through their fixed grid "
                     "(straight-through gradients) and were re-packed with the same scheme and scales")
    return DistillReport(
        steps_planned=spec.steps, steps_done=done, stopped=state.stopped, best_step=best.step,
        best_perplexity=best.perplexity if best.step is not None else None, initial_perplexity=initial,
        last_perplexity=state.last_perplexity if done else initial, eval_windows=int(eval_windows.shape[0]),
        seqlen=seqlen, train_tokens=tokens, tokens_per_s=tokens / state.train_s if state.train_s else 0.0,
        wall_s=time.perf_counter() - started, hold_zeros=spec.holds_zeros, precision=trainer.precision,
        device=str(trainer.device), student_params=param_count(student), teacher_params=param_count(teacher),
        curve=curve, notes=notes)
