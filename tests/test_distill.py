"""Knowledge distillation: the loss on hand-computed numbers, the spec's refusals, the students, the
training loop (masks, cancel, time budget, best checkpoint) on the sample models, the recipe step and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from core import cli, data, models
from core.distill import (
    DistillSpec,
    VocabularyMismatchError,
    build_student_,
    check_compatible,
    distill_,
    evenly_spaced_layers,
    lr_at,
    run_step,
    training_data,
)
from core.distill.loss import distill_loss, hidden_mse, kd_kl
from core.distill.qat import FakeQuantLinear, fake_quantize_, repack_
from core.distill.train import _Trainer, hidden_pairs
from core.errors import CancelledError, SpecError, TextSourceError, UnsafeModelError
from core.evaluate import EvalSpec, evaluate_quality
from core.layers import block_linear_layers, decoder_blocks
from core.prune import PruneSpec, prune_
from core.quantize import QuantizeSpec, quantize_
from core.quantize.qlinear import QuantLinear
from core.recipe import Recipe, Step, pipeline
from core.store import ResultStore
from tests.helpers import pickle_only_folder

TINY = {"steps": 4, "batch_size": 2, "seqlen": 64, "eval_windows": 2, "eval_every": 2, "text": "sample-train"}


@pytest.fixture(scope="module")
def teacher() -> models.LoadedModel:
    return models.load("sample:teacher", device="cpu")


@pytest.fixture(scope="module")
def student() -> models.LoadedModel:
    return models.load("sample:student", device="cpu")


@pytest.fixture(scope="module")
def train_text(tmp_path_factory) -> str:
    """A slice of the samples' training text (tokenizing all of it would take seconds per run)."""
    path = tmp_path_factory.mktemp("distill") / "train.txt"
    path.write_text(data.load_text("sample-train").text[:200_000], encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def train_ids(teacher, train_text) -> torch.Tensor:
    return data.tokenize(teacher.tokenizer, data.load_text(train_text).text)


def heldout(teacher, windows: int = 4, seqlen: int = 128) -> torch.Tensor:
    return data.windows(data.tokenize(teacher.tokenizer, data.sample_heldout_text()), seqlen, windows)


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# ---- the loss: exact numbers on tiny tensors -----------------------------------------------------

STUDENT_LOGITS = [[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [5.0, -5.0, 1.0]]  # the last position predicts nothing
TEACHER_LOGITS = [[2.0, 1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 0.0, 9.0]]
TOKENS = [0, 2, 1]  # position 0 predicts token 2, position 1 predicts token 1


def _softmax(z: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _hand_kd(t: float) -> float:
    """T^2 * mean over the two predicting positions of sum_v p_t log(p_t / p_s), written out in floats."""
    kls = [sum(pt * math.log(pt / ps) for pt, ps in zip(_softmax(zt, t), _softmax(zs, t), strict=True))
           for zs, zt in zip(STUDENT_LOGITS[:2], TEACHER_LOGITS[:2], strict=True)]
    return t * t * sum(kls) / 2


def _tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([STUDENT_LOGITS]), torch.tensor([TEACHER_LOGITS]), torch.tensor([TOKENS])


def test_loss_matches_a_hand_computed_example():
    student, teacher, ids = _tensors()
    parts = distill_loss(student, teacher, ids, temperature=2.0, alpha=0.5)
    ce = (-math.log(_softmax(STUDENT_LOGITS[0], 1)[2]) - math.log(_softmax(STUDENT_LOGITS[1], 1)[1])) / 2
    assert parts.kd == pytest.approx(_hand_kd(2.0), rel=1e-6) and parts.kd == pytest.approx(0.3561264, rel=1e-6)
    assert parts.ce == pytest.approx(ce, rel=1e-6) and parts.ce == pytest.approx(1.7531091, rel=1e-6)
    assert float(parts.total) == pytest.approx(0.5 * 0.3561264 + 0.5 * 1.7531091, rel=1e-6)
    only_kd = distill_loss(student, teacher, ids, temperature=2.0, alpha=1.0)
    assert float(only_kd.total) == pytest.approx(parts.kd, rel=1e-6)


def _tutorial_formula(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """The formula that circulates: cross-entropy of the student against the *raw* teacher logits, over T."""
    return -(teacher * F.log_softmax(student / t, dim=-1)).sum(-1).mean() / t


def test_the_tutorial_formula_is_not_a_divergence_and_ours_is():
    student, teacher, _ = _tensors()
    same = teacher[:, :2]
    assert float(kd_kl(same, same.clone(), 2.0)) == pytest.approx(0.0, abs=1e-7)  # matching the teacher costs 0
    assert abs(float(_tutorial_formula(same, same, 2.0))) > 0.1  # ...it does not under the tutorial formula
    assert float(_tutorial_formula(student[:, :2], -teacher[:, :2].abs(), 2.0)) < 0  # and can go negative
    wrong = float(_tutorial_formula(student[:, :2], teacher[:, :2], 2.0))
    assert wrong != pytest.approx(_hand_kd(2.0), rel=0.05)


def test_t_squared_keeps_the_kd_gradient_the_same_order_as_t_grows():
    generator = torch.Generator().manual_seed(0)
    teacher = 3 * torch.randn(4, 8, 50, generator=generator)
    start = 3 * torch.randn(4, 8, 50, generator=generator)
    norms = {}
    for t in (1.0, 2.0, 4.0, 8.0):
        student = start.clone().requires_grad_(True)
        kd_kl(student, teacher, t).backward()
        norms[t] = float(student.grad.norm())
    assert max(norms.values()) / min(norms.values()) < 2.0, norms
    # Without the T^2 factor the gradient would shrink like 1 / T^2: 64x from T = 1 to T = 8.
    assert norms[8.0] / 64 < norms[1.0] / 20


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_scored_in_float32(dtype):
    generator = torch.Generator().manual_seed(0)
    teacher = 5 * torch.randn(2, 16, 4096, generator=generator)
    student = teacher + 0.05 * torch.randn(2, 16, 4096, generator=generator)
    half_s, half_t = student.to(dtype), teacher.to(dtype)
    ours = float(kd_kl(half_s, half_t, 2.0))
    exact = float(kd_kl(half_s.double(), half_t.double(), 2.0))
    assert math.isfinite(ours) and ours == pytest.approx(exact, rel=1e-4)
    # The same math left in 16 bits is off by a large factor: the test would notice a missing upcast.
    log_s, log_t = F.log_softmax(half_s / 2, -1), F.log_softmax(half_t / 2, -1)
    in_16_bits = float(4 * (log_t.exp() * (log_t - log_s)).sum(-1).mean())
    assert abs(in_16_bits - exact) > 0.5 * exact


def test_padding_positions_do_not_count():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(1, 6, 11, generator=generator), torch.randn(1, 6, 11, generator=generator)
    ids = torch.randint(0, 11, (1, 6), generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    padded = distill_loss(student, teacher, ids, 2.0, 0.5, attention_mask=mask)
    garbage = student.clone()
    garbage[:, 4:] = 100.0  # whatever the model says at padding does not matter
    assert float(distill_loss(garbage, teacher, ids, 2.0, 0.5, attention_mask=mask).total) == pytest.approx(
        float(padded.total), rel=1e-6)
    cut = distill_loss(student[:, :4], teacher[:, :4], ids[:, :4], 2.0, 0.5)  # the same, without padding
    assert float(padded.total) == pytest.approx(float(cut.total), rel=1e-6)


def test_hidden_term_projects_the_student_width_to_the_teachers():
    hidden = torch.randn(2, 5, 8)
    assert float(hidden_mse(hidden, hidden.clone(), None)) == 0.0
    projection = torch.nn.Linear(4, 8, bias=False)
    small = torch.randn(2, 5, 4)
    with torch.no_grad():
        assert float(hidden_mse(small, projection(small), projection)) == pytest.approx(0.0, abs=1e-10)
    assert hidden_pairs(3, 6) == ((0, 1), (1, 3), (2, 5))  # same relative depth, the last to the last


def test_learning_rate_warms_up_linearly_then_follows_a_cosine_to_a_tenth():
    rates = [lr_at(step, 100, 10, 1e-3) for step in range(100)]
    assert rates[:10] == pytest.approx([1e-4 * (i + 1) for i in range(10)])
    assert rates[10] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))
    assert lr_at(0, 5, 0, 1e-3) == pytest.approx(1e-3)


# ---- the spec: bad input is refused before anything runs ----------------------------------------


@pytest.mark.parametrize("params, message", [
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"temperature": -1.0}, "temperature must be a number > 0"),
    ({"temperature": float("nan")}, "temperature must be a number > 0"),
    ({"alpha": -0.1}, "alpha must be in [0, 1]"),
    ({"alpha": 1.5}, "alpha must be in [0, 1]"),
    ({"steps": 0}, "steps must be a whole number >= 1"),
    ({"steps": 2.5}, "steps must be a whole number >= 1"),
    ({"lr": 0}, "lr must be a number in (0, 1)"),
    ({"lr": -1e-4}, "lr must be a number in (0, 1)"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
    ({"steps": 10, "warmup_steps": 11}, "warmup_steps must be a whole number from 0 to steps (10)"),
    ({"keep_every": 2}, "need student: layer_drop"),
    ({"student": "layer_drop", "keep_layers": [0, 0]}, "distinct block indices"),
    ({"student": "width"}, "student: width needs it"),
    ({"student": "width", "width_fraction": 1.0}, "strictly between 0 and 1"),
    ({"max_minutes": 0}, "max_minutes must be a number > 0"),
    ({"hidden_layers": [[0]]}, "pairs"),
    ({"text": "/no/such/text.txt"}, "neither a known name"),
])
def test_spec_refusals_say_what_was_given_and_what_is_allowed(params, message):
    with pytest.raises((SpecError, TextSourceError), match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        DistillSpec(**params)


def test_a_recipe_step_refuses_unknown_keys_and_reads_the_rest():
    with pytest.raises(SpecError, match="unknown distill parameter.*temprature"):
        Recipe.from_dict({"model": "sample:teacher", "steps": [{"distill": {"temprature": 2}}]})
    step = Step("distill", {"student": "layer_drop", "keep_layers": [5, 0, 2], "steps": 10})
    assert step.parsed.keep_layers == (0, 2, 5) and step.parsed.warmup_steps == 1
    assert step.parsed.label == "distill layer_drop keep [0, 2, 5] T=2 a=0.5 10 steps"
    assert DistillSpec(student="layer_drop").keep_every == 2


def test_text_shorter_than_one_batch_is_refused_before_training(teacher, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n" * 20, encoding="utf-8")
    spec = DistillSpec(student="layer_drop", text=str(short), batch_size=8, seqlen=128)
    with pytest.raises(TextSourceError, match="one batch needs batch_size x seqlen = 8 x 128"):
        training_data(teacher.tokenizer, spec, 128, "sample-train")
    model = models.clone(teacher.model)
    with pytest.raises(TextSourceError):
        run_step(model, DistillSpec(student="layer_drop", text=str(short), seqlen=128), teacher.model,
                 teacher.tokenizer, "sample-train")
    assert len(decoder_blocks(model)[1]) == 6  # refused before the student was cut from the model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), teacher.model.state_dict().values(),
                                                  strict=True))


# ---- students and compatibility -------------------------------------------------------------------


def test_vocabulary_mismatch_says_which_students_are_possible(student, llama):
    other = models.load(llama, device="cpu")
    with pytest.raises(VocabularyMismatchError, match="predicts over 4096 tokens.*layer_drop.*width.*self"):
        check_compatible(student.model, other.model)
    assert issubclass(VocabularyMismatchError, SpecError)


def test_a_student_larger_than_its_teacher_is_a_warning_not_an_error(teacher, student):
    with pytest.warns(UserWarning, match="more parameters"):
        notes = check_compatible(student.model, teacher.model, student.tokenizer, teacher.tokenizer)
    assert notes and "3,221,952" in notes[0]


def test_layer_dropped_student_starts_from_the_teachers_kept_blocks(teacher):
    spec = DistillSpec(student="layer_drop", keep_layers=[0, 2, 5])
    copy, description = build_student_(models.clone(teacher.model), spec)
    _, kept = decoder_blocks(copy)
    _, original = decoder_blocks(teacher.model)
    assert len(kept) == 3 and copy.config.num_hidden_layers == 3 and "[0, 2, 5]" in description
    for new, old in zip(kept, (original[0], original[2], original[5]), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), old.state_dict().values(),
                                                      strict=True))
    assert torch.equal(copy.get_input_embeddings().weight, teacher.model.get_input_embeddings().weight)
    assert evenly_spaced_layers(6, 3) == (0, 3, 5) and evenly_spaced_layers(30, 15)[-1] == 29
    with pytest.raises(SpecError, match="keeps all 6 blocks"):
        build_student_(models.clone(teacher.model), DistillSpec(student="layer_drop", keep_layers=list(range(6))))


# ---- the training loop on the sample models ----------------------------------------------------


def test_teacher_is_left_as_it_was(teacher, train_ids):
    before = state_of(teacher.model)
    flags = [p.requires_grad for p in teacher.model.parameters()]
    spec = DistillSpec(student="layer_drop", **TINY)
    copy, _ = build_student_(models.clone(teacher.model), spec)
    distill_(copy, teacher.model, spec, train_ids, heldout(teacher, 2, 64))
    assert all(torch.equal(before[k], v) for k, v in teacher.model.state_dict().items())
    assert [p.requires_grad for p in teacher.model.parameters()] == flags
    assert all(p.grad is None for p in teacher.model.parameters()) and not teacher.model.training


def test_one_training_step_lowers_the_loss_on_a_fixed_batch(teacher, student, train_ids):
    """Training ids exactly one window long: every batch the trainer draws is the same fixed batch."""
    spec = DistillSpec(student="self", steps=1, lr=1e-3, batch_size=2, seqlen=64, eval_every=0, eval_windows=1,
                       text="sample-train")
    model = models.clone(student.model)
    trainer = _Trainer(model, teacher.model, spec, train_ids[:64], 64)
    batch = trainer._batch()
    assert torch.equal(batch, train_ids[:64].expand(2, 64))
    with torch.no_grad():
        before = trainer._loss(batch)
    record = trainer.step(0, 0.0)
    with torch.no_grad():
        after = trainer._loss(batch)
    assert record.lr == pytest.approx(1e-3) and record.grad_norm > 0
    assert record.loss == pytest.approx(float(before.total), rel=1e-4)  # the step saw exactly this batch
    assert float(after.total) < 0.95 * float(before.total), (float(before.total), float(after.total))
    assert after.kd < before.kd and after.ce < before.ce


def test_a_short_kd_run_lowers_the_students_held_out_perplexity(teacher, train_ids):
    spec = DistillSpec(student="layer_drop", keep_layers=[0, 2, 4], steps=12, lr=1e-3, batch_size=4, seqlen=128,
                       eval_every=6, eval_windows=2, text="sample-train")
    copy, _ = build_student_(models.clone(teacher.model), spec)
    windows = heldout(teacher)
    before = evaluate_quality(copy, windows).perplexity
    records = []
    report = distill_(copy, teacher.model, spec, train_ids, heldout(teacher, 2, 128), on_step=records.append)
    after = evaluate_quality(copy, windows).perplexity
    assert after < 0.8 * before, (before, after)  # 183 -> 125 when this was written
    assert report.stopped == "completed" and report.steps_done == 12 and report.train_tokens == 12 * 4 * 128
    assert [r["step"] for r in report.curve] == list(range(13)) and records == report.curve
    assert [r["step"] for r in report.curve if r["eval_perplexity"] is not None] == [0, 6, 12]
    assert all(r["kd"] > 0 and r["ce"] > 0 and r["lr"] > 0 and r["tokens_per_s"] > 0 for r in report.curve[1:])
    assert not copy.training


def test_pruned_zeros_stay_zero_while_the_rest_trains(student, train_ids):
    pruned = models.clone(student.model)
    prune_(pruned, PruneSpec(method="magnitude", sparsity=0.5))
    zeros = {name: layer.weight.detach() == 0 for name, layer in block_linear_layers(pruned)}
    before = state_of(pruned)
    spec = DistillSpec(student="self", lr=1e-3, **TINY)
    report = distill_(pruned, student.model, spec, train_ids, heldout(student, 2, 64))
    assert report.hold_zeros
    for name, layer in block_linear_layers(pruned):
        assert torch.equal(layer.weight.detach() == 0, zeros[name]), name
    assert report.best_step > 0  # trained weights were kept: the non-zero ones moved
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items())


def quantized_layers(model: torch.nn.Module) -> dict[str, QuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def test_a_fake_quantized_student_starts_as_the_packed_model_and_packs_back_to_it(student):
    """The swap to latent weights and back changes nothing, and the gradient reaches the latent weights."""
    packed = models.clone(student.model)
    quantize_(packed, QuantizeSpec(method="rtn", bits=3, group_size=32))
    ids = heldout(student, 2, 64)
    with torch.no_grad():
        expected = packed(input_ids=ids).logits
    codes = {name: m.codes().clone() for name, m in quantized_layers(packed).items()}
    names = fake_quantize_(packed)
    assert len(names) == len(codes) and all(isinstance(packed.get_submodule(n), FakeQuantLinear) for n in names)
    logits = packed(input_ids=ids).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    logits.float().logsumexp(-1).mean().backward()
    layer = packed.get_submodule(names[0])
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0  # straight through the rounding
    repack_(packed, names)
    assert {n: m.codes() for n, m in quantized_layers(packed).items()}.keys() == codes.keys()
    assert all(torch.equal(m.codes(), codes[n]) for n, m in quantized_layers(packed).items())


def test_a_quantized_student_trains_through_its_grid_and_ends_packed(student, train_ids):
    packed = models.clone(student.model)
    quantize_(packed, QuantizeSpec(method="rtn", bits=3, group_size=32))
    before = {name: (m.codes().clone(), m.scales.clone()) for name, m in quantized_layers(packed).items()}
    windows = heldout(student, 2, 64)
    start = evaluate_quality(packed, windows).perplexity
    # latent weights start at the centres of their rounding bins: a large step moves some across
    spec = DistillSpec(student="self", lr=1e-2, **{**TINY, "eval_every": 0}, keep_best=False)
    report = distill_(packed, student.model, spec, train_ids, windows)
    assert report.initial_perplexity == pytest.approx(start, rel=1e-5)  # training starts from the packed model
    after = quantized_layers(packed)
    assert after.keys() == before.keys() and not any(isinstance(m, FakeQuantLinear) for m in packed.modules())
    assert all(torch.equal(m.scales, before[n][1]) and m.scheme.bits == 3 for n, m in after.items())
    assert any(not torch.equal(m.codes(), before[n][0]) for n, m in after.items())  # the codes moved
    ended = evaluate_quality(packed, windows).perplexity
    assert ended == pytest.approx(report.last_perplexity, rel=1e-5)  # the packed model is what was trained
    assert any("re-packed" in note for note in report.notes)


def test_a_quantized_student_holds_its_zero_codes_only_when_asked(student, train_ids):
    runs = {}
    for hold in (None, True):
        packed = models.clone(student.model)
        quantize_(packed, QuantizeSpec(method="rtn", bits=3, group_size=32))
        zero = {n: m.codes() == m.zero_points()[0, 0] for n, m in quantized_layers(packed).items()}
        spec = DistillSpec(student="self", lr=1e-2, hold_zeros=hold, **{**TINY, "eval_every": 0}, keep_best=False)
        distill_(packed, student.model, spec, train_ids, heldout(student, 2, 64))
        # weights at the zero point that left it (others may round onto it: that is not a held zero)
        runs[hold] = sum(int((zero[n] & (m.codes() != m.zero_points()[0, 0])).sum())
                         for n, m in quantized_layers(packed).items())
    assert runs[True] == 0 and runs[None] > 0, runs


def test_cancel_stops_at_the_next_step_and_keeps_the_best_so_far(teacher, train_ids):
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3  # asked before each step: three steps run

    spec = DistillSpec(student="layer_drop", **{**TINY, "steps": 10, "eval_every": 1})
    copy, _ = build_student_(models.clone(teacher.model), spec)
    windows = heldout(teacher, 2, 64)
    report = distill_(copy, teacher.model, spec, train_ids, windows, cancel=cancel)
    assert report.cancelled and report.stopped == "cancelled" and report.steps_done == 3
    evaluated = {r["step"]: r["eval_perplexity"] for r in report.curve}
    assert report.best_perplexity == min(evaluated.values()) and report.best_step == min(evaluated, key=evaluated.get)
    restored = evaluate_quality(copy, windows).perplexity
    assert restored == pytest.approx(report.best_perplexity, rel=1e-6)
    assert "kept the weights of step" in report.notes[0]


def test_a_cancel_measures_the_steps_trained_since_the_last_evaluation(teacher, train_ids):
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3  # three steps run, none of them evaluated (eval_every 10)

    spec = DistillSpec(student="layer_drop", **{**TINY, "steps": 10, "eval_every": 10})
    copy, _ = build_student_(models.clone(teacher.model), spec)
    windows = heldout(teacher, 2, 64)
    report = distill_(copy, teacher.model, spec, train_ids, windows, cancel=cancel)
    assert report.stopped == "cancelled" and report.steps_done == 3 and len(report.curve) == 5
    last = report.curve[-1]  # an evaluation-only record of the weights trained so far
    assert last["step"] == 3 and last["loss"] is None and last["eval_perplexity"] == report.last_perplexity
    assert report.best_perplexity == min(report.initial_perplexity, report.last_perplexity)
    assert report.best_step == (3 if report.last_perplexity < report.initial_perplexity else 0)
    assert evaluate_quality(copy, windows).perplexity == pytest.approx(report.best_perplexity, rel=1e-6)


def test_the_time_budget_ends_training_after_the_step_that_crosses_it(teacher, train_ids):
    spec = DistillSpec(student="layer_drop", max_minutes=1e-6, **TINY)
    copy, _ = build_student_(models.clone(teacher.model), spec)
    report = distill_(copy, teacher.model, spec, train_ids, heldout(teacher, 2, 64))
    assert report.stopped == "time budget" and report.steps_done == 1 and not report.cancelled
    assert report.curve[-1]["eval_perplexity"] is not None


def test_hidden_state_term_trains_a_projection_across_widths(teacher, student, train_ids):
    spec = DistillSpec(student="sample:student", hidden_weight=0.5, **TINY)
    copy = models.clone(student.model)
    report = distill_(copy, teacher.model, spec, train_ids, heldout(teacher, 2, 64))
    assert all(r["hidden"] > 0 for r in report.curve[1:])
    assert report.curve[-1]["loss"] == pytest.approx(
        0.5 * report.curve[-1]["kd"] + 0.5 * report.curve[-1]["ce"] + 0.5 * report.curve[-1]["hidden"], rel=1e-5)


# ---- the recipe step and the command line -----------------------------------------------------------

TINY_EVAL = EvalSpec(text="sample", seqlen=64, max_windows=2, latency=False)


def test_prune_then_distill_recovers_with_the_zeros_held(tmp_path, student, train_text):
    before = state_of(student.model)
    recipe = Recipe(model="sample:student", evaluation=TINY_EVAL, steps=(
        Step("prune", {"method": "magnitude", "sparsity": 0.5}),
        Step("distill", {"student": "self", **TINY, "text": train_text})))
    records = []
    row = pipeline.run(recipe, ResultStore(tmp_path), base=student, on_step=records.append)
    assert row.status == "ok" and row.nonzero_params < 0.8 * row.params
    report = row.details["steps"][1]
    assert report["kind"] == "distill" and report["hold_zeros"] and len(report["curve"]) == TINY["steps"] + 1
    assert records == report["curve"] and row.details["method"].endswith("distill self T=2 a=0.5 4 steps")
    assert all(torch.equal(before[k], v) for k, v in student.model.state_dict().items())


def test_quantize_then_distill_self_is_a_recipe(tmp_path, student, train_text):
    recipe = Recipe(model="sample:student", evaluation=TINY_EVAL, steps=(
        Step("quantize", {"method": "rtn", "bits": 4, "group_size": 32}),
        Step("distill", {"student": "self", **TINY, "text": train_text})))
    row = pipeline.run(recipe, ResultStore(tmp_path), base=student)
    assert row.status == "ok", row.error
    assert "4-bit" in row.kernel and "re-packed" in " ".join(row.details["steps"][1]["notes"])


def test_a_model_reference_student_replaces_the_model_for_evaluation(tmp_path, teacher, student, train_text):
    recipe = Recipe(model="sample:teacher", evaluation=TINY_EVAL,
                    steps=(Step("distill", {"student": "sample:student", **TINY, "text": train_text}),))
    row = pipeline.run(recipe, ResultStore(tmp_path), base=teacher)
    assert row.params == sum(p.numel() for p in student.model.parameters())
    assert row.base_perplexity < row.perplexity and row.top1_agreement is not None


def test_a_cancelled_distillation_is_stored_with_its_best_student_metrics_and_curve(tmp_path, student, train_text):
    """Cancel mid-training: the best weights so far are evaluated and stored (status cancelled, with metrics and
    the curve); the steps after the distillation do not run and the row says so."""
    records = []
    recipe = Recipe(model="sample:student", evaluation=TINY_EVAL, steps=(
        Step("distill", {"student": "layer_drop", **TINY, "steps": 50, "eval_every": 1, "text": train_text}),
        Step("quantize", {"method": "rtn", "bits": 4, "group_size": 32})))
    store = ResultStore(tmp_path)
    row = pipeline.run(recipe, store, base=student, cancel=lambda: len(records) > 3, on_step=records.append)
    assert row.status == "cancelled" and row.error is None and store.get(row.id).status == "cancelled"
    assert row.perplexity is not None and 1 < row.perplexity < row.base_perplexity * 100 and row.top1_acc is not None
    report = row.details["steps"][0]
    assert len(row.details["steps"]) == 1 and "dense" in row.kernel  # the quantize step did not run
    assert report["stopped"] == "cancelled" and report["steps_done"] == 3 and report["curve"] == records
    evaluated = {r["step"]: r["eval_perplexity"] for r in report["curve"]}
    assert report["best_step"] == min(evaluated, key=evaluated.get)
    assert any("cancelled during step 1" in note and "not run: rtn w4 g32 sym" in note for note in row.details["notes"])
    layer_dropped = report["student_params"]
    assert row.params == layer_dropped < sum(p.numel() for p in student.model.parameters())


def test_a_second_cancel_stops_the_evaluation_of_a_cancelled_distillation(tmp_path, student, train_text):
    records = []
    recipe = Recipe(model="sample:student", evaluation=TINY_EVAL,
                    steps=(Step("distill", {"student": "layer_drop", **TINY, "steps": 50, "text": train_text}),))
    store = ResultStore(tmp_path)
    with pytest.raises(CancelledError, match="evaluation cancelled"):
        pipeline.run(recipe, store, base=student, cancel=lambda: len(records) > 2, on_step=records.append,
                     abort=lambda: True)
    (row,) = store.list()
    assert row.status == "cancelled" and row.perplexity is None and len(records) == 3


def test_a_pickled_student_loads_only_with_the_recipes_opt_in(tmp_path, llama, text_file):
    student = str(pickle_only_folder(tmp_path / "pickled", family="llama"))  # the teacher's tokenizer and shape
    steps = (Step("distill", {"student": student, **TINY, "steps": 1, "text": str(text_file)}),)
    evaluation = EvalSpec(text=str(text_file), seqlen=32, max_windows=2, latency=False)
    store = ResultStore(tmp_path / "results")
    with pytest.raises(UnsafeModelError, match="--allow-pickle"):
        pipeline.run(Recipe(model=llama, steps=steps, evaluation=evaluation), store)
    row = pipeline.run(Recipe(model=llama, steps=steps, evaluation=evaluation, allow_pickle=True), store)
    assert row.status == "ok" and row.details["steps"][0]["student"] == student
    assert "allow_pickle: true" in row.recipe  # rerunning the stored recipe repeats the choice


def test_cli_distill_prints_the_row_as_json(tmp_path, capsys, train_text):
    code = cli.main(["distill", "--model", "sample:teacher", "--student", "layer_drop", "--keep-every", "3",
                     "--steps", "2", "--batch-size", "2", "--train-seqlen", "64", "--eval-windows", "2",
                     "--train-text", train_text, "--seqlen", "64", "--max-windows", "2", "--no-latency", "--json",
                     "--results-dir", str(tmp_path)])
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    report = row["details"]["steps"][0]
    assert report["steps_done"] == 2 and "blocks [0, 3] of 6" in report["student"]
    assert cli.main(["distill", "--alpha", "2", "--results-dir", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    assert "alpha must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_runs_under_autocast(train_ids):
    teacher = models.load("sample:teacher", device="cuda", dtype="fp32")
    spec = DistillSpec(student="layer_drop", **TINY)
    copy, _ = build_student_(models.clone(teacher.model), spec)
    windows = heldout(teacher, 2, 64)
    report = distill_(copy, teacher.model, spec, train_ids, windows)
    assert "autocast" in report.precision and report.device.startswith("cuda")
    assert all(math.isfinite(r["loss"]) for r in report.curve[1:])
    assert report.best_perplexity <= report.initial_perplexity
