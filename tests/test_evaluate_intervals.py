"""Intervals over windows, checked by hand: Student-t quantiles, the perplexity's interval, the paired
comparison with a base, the phrases that say them; then on the sample teacher through the pipeline."""

from __future__ import annotations

import math

import pytest

from core import models
from core.cli.output import print_row
from core.evaluate import (
    EvalSpec,
    evaluate_quality,
    mean_interval,
    paired_comparison,
    perplexity_interval,
    report,
    score_batch,
    t_quantile,
)
from core.evaluate import measurement as evaluation
from core.evaluate.intervals import interval_notes, t_two_sided_mass
from core.recipe import Recipe, Step, pipeline
from core.store import ResultStore
from tests.test_evaluate import MODEL_TABLE, WINDOWS, Bigram

# Four windows of 10 tokens whose mean NLLs are 2.0, 2.2, 2.4, 2.6 (their NLL sums: 20, 22, 24, 26).
SUMS, COUNTS = [20.0, 22.0, 24.0, 26.0], [10, 10, 10, 10]


# --- Student-t ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281),
                                              (30, 2.0423), (63, 1.9983), (1000, 1.9623)])
def test_t_quantile_matches_the_printed_tables(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=1e-4)


def test_t_mass_has_the_closed_forms_of_one_and_two_degrees_of_freedom():
    # df 1 is Cauchy: P(|T| <= 1) = 2 atan(1) / pi = 1/2; df 2: P(|T| <= t) = t / sqrt(t^2 + 2)
    assert t_two_sided_mass(1.0, 1) == pytest.approx(0.5, abs=1e-15)
    assert t_two_sided_mass(3.0, 2) == pytest.approx(3 / math.sqrt(11), abs=1e-15)
    assert t_quantile(0.95, 5000) == pytest.approx(1.96, abs=1e-3)  # tends to the normal's 1.95996


def test_t_quantile_refuses_nonsense():
    with pytest.raises(ValueError):
        t_quantile(0.95, 0)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)


# --- one model's interval ----------------------------------------------------------------------


def test_interval_of_equal_windows_is_the_textbook_t_interval():
    # mean 2.3; sd of (2.0, 2.2, 2.4, 2.6) = sqrt(0.2 / 3) = 0.2581989; se = sd / sqrt(4) = 0.1290994;
    # t(0.975, 3) = 3.1824463; half-width = 0.4108521
    nll = mean_interval(SUMS, COUNTS)
    assert nll.mean == pytest.approx(2.3, abs=1e-15)
    assert nll.half_width == pytest.approx(0.4108521, abs=1e-7)
    assert (nll.windows, nll.tokens) == (4, 40)
    interval = perplexity_interval(SUMS, COUNTS)
    # exp(2.3) = 9.974182; exp(2.3 - 0.4108521) = 6.613731; exp(2.3 + 0.4108521) = 15.042087
    assert interval.perplexity == pytest.approx(9.974182, abs=1e-6)
    assert (interval.low, interval.high) == (pytest.approx(6.613731, abs=1e-6), pytest.approx(15.042087, abs=1e-6))
    assert interval.low < interval.perplexity < interval.high
    assert interval.as_dict()["notes"] == ["only 40 tokens scored: the interval is rough (10,000 or more give a "
                                           "steadier figure)"]


def test_interval_weights_windows_by_their_tokens():
    # sums 10, 30, 12 over 5, 10, 4 tokens: m = 52 / 19 = 2.7368421; residuals s - m n = -3.6842, 2.6316, 1.0526,
    # squares summing to 21.606648; se = sqrt(3 / 2 * 21.606648) / 19 = 0.2996303; t(0.975, 2) = 4.3026527
    nll = mean_interval([10.0, 30.0, 12.0], [5, 10, 4])
    assert nll.mean == pytest.approx(52 / 19, abs=1e-15)
    assert nll.half_width == pytest.approx(4.3026527 * 0.2996303, abs=1e-6)


def test_a_single_window_has_no_interval_and_says_so():
    interval = perplexity_interval([23.0], [10])
    assert interval.perplexity == pytest.approx(math.exp(2.3))
    assert interval.low is None and interval.high is None
    assert interval.notes == ["one window: no interval (score 2 or more windows for one)"]
    assert report.plus_minus(interval.perplexity, None, None, 2) == "9.97"
    assert report.interval_text(None, None, {"windows": 1, "seqlen": 11}) == "no interval: one window, 1 windows x " \
                                                                             "11 tokens"


def test_enough_tokens_leave_no_note():
    assert interval_notes(64, 16_320) == []
    assert interval_notes(4, 9_999) and "rough" in interval_notes(4, 9_999)[0]


def test_mismatched_or_empty_windows_are_refused():
    with pytest.raises(ValueError):
        mean_interval([1.0, 2.0], [1])
    with pytest.raises(ValueError):
        mean_interval([], [])


# --- paired ------------------------------------------------------------------------------------


def test_paired_difference_by_hand_is_within_noise():
    # per-window differences 0.05, 0.15, -0.02, 0.10 (10 tokens each): mean 0.07, sd 0.0725718,
    # half-width 3.1824463 * 0.0725718 / 2 = 0.1154779: [-0.0454779, 0.1854779] holds 0
    base = SUMS
    model = [s + 10 * d for s, d in zip(base, [0.05, 0.15, -0.02, 0.10], strict=True)]
    compared = paired_comparison(model, base, COUNTS)
    assert compared.nll_diff == pytest.approx(0.07, abs=1e-12)
    assert compared.nll_diff_low == pytest.approx(-0.0454779, abs=1e-7)
    assert compared.nll_diff_high == pytest.approx(0.1854779, abs=1e-7)
    assert compared.ratio == pytest.approx(math.exp(0.07)) and compared.ratio_low < 1 < compared.ratio_high
    assert compared.verdict == "within noise" and compared.within_noise


def test_paired_interval_finds_a_difference_two_overlapping_intervals_hide():
    # differences 0.10, 0.12, 0.11, 0.13: mean 0.115, half-width 0.0205426 -> [0.0944574, 0.1355426], above 0,
    # while each model's own interval is +-0.41 in NLL: the two perplexity intervals overlap almost entirely
    model = [s + 10 * d for s, d in zip(SUMS, [0.10, 0.12, 0.11, 0.13], strict=True)]
    compared = paired_comparison(model, SUMS, COUNTS)
    assert compared.nll_diff_low == pytest.approx(0.0944574, abs=1e-7)
    assert compared.verdict == "worse" and not compared.within_noise
    own, base = perplexity_interval(model, COUNTS), perplexity_interval(SUMS, COUNTS)
    assert own.low < base.high  # unpaired, the intervals overlap
    better = paired_comparison(SUMS, model, COUNTS)
    assert better.verdict == "better" and better.ratio == pytest.approx(1 / compared.ratio)


def test_a_model_against_itself_is_within_noise_with_a_zero_width_interval():
    compared = paired_comparison(SUMS, SUMS, COUNTS)
    assert (compared.ratio, compared.ratio_low, compared.ratio_high) == (1.0, 1.0, 1.0)
    assert compared.verdict == "within noise"


def test_one_paired_window_gives_no_verdict():
    compared = paired_comparison([25.0], [20.0], [10])
    assert compared.verdict == "no interval" and compared.ratio_low is None
    assert compared.within_noise  # no claim of a difference without an interval
    text = report.vs_base_text(compared.as_dict())
    assert "no interval" in text and "worse" not in text


# --- phrases -----------------------------------------------------------------------------------


def test_phrases_say_the_interval_and_the_verdict():
    assert report.plus_minus(9.974182, 6.613731, 15.042087, 2) == "9.97 ± 4.21"
    details = {"windows": 4, "seqlen": 11}
    assert report.interval_text(6.613731, 15.042087, details) == "95% CI 6.61–15.04, 4 windows x 11 tokens"
    noise = paired_comparison([s + 10 * d for s, d in zip(SUMS, [0.05, 0.15, -0.02, 0.10], strict=True)], SUMS,
                              COUNTS).as_dict()
    assert report.vs_base_text(noise) == "within noise: +7.3% perplexity vs base (paired 95% CI -4.4% to +20.4%)"
    assert report.verdict({"vs_base": noise}) == "within noise" and not report.shows_change({"vs_base": noise})
    small = {"ratio": 1.000161, "ratio_low": 1.000026, "ratio_high": 1.000295, "verdict": "worse"}
    assert report.vs_base_text(small) == "+0.016% perplexity vs base (paired 95% CI +0.003% to +0.029%): worse"
    assert report.shows_change({"vs_base": small})


# --- per-window losses from evaluate_quality ---------------------------------------------------


def test_evaluate_quality_keeps_each_windows_nll_sum():
    model = Bigram(MODEL_TABLE)
    expected = [score_batch(model(w[None]).logits.detach(), w[None]).nll_sum for w in WINDOWS]
    for batch_size in (1, 2):
        metrics = evaluate_quality(model, WINDOWS, batch_size=batch_size)
        assert metrics.window_nll == pytest.approx(expected, rel=1e-12)
        assert metrics.window_tokens == (3, 3)
        assert metrics.base_window_nll is None and metrics.vs_base() is None
    interval = metrics.interval()
    assert interval.perplexity == pytest.approx(metrics.perplexity, rel=1e-12)
    assert interval == perplexity_interval(expected, [3, 3])


def test_the_base_is_scored_window_by_window_on_the_same_windows():
    base = Bigram([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    metrics = evaluate_quality(Bigram(MODEL_TABLE), WINDOWS, base=base)
    alone = evaluate_quality(base, WINDOWS)
    assert metrics.base_window_nll == pytest.approx(alone.window_nll, rel=1e-6)
    assert metrics.base_interval().perplexity == pytest.approx(metrics.base_perplexity, rel=1e-9)
    compared = metrics.vs_base()
    assert compared.ratio == pytest.approx(metrics.perplexity / metrics.base_perplexity, rel=1e-9)


# --- the sample teacher, end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    return models.load("sample:teacher", device="cpu")


def _run(teacher, tmp_path, steps, windows):
    recipe = Recipe(model="sample:teacher", device="cpu", steps=steps,
                    evaluation=EvalSpec(max_windows=windows, latency=False))
    return pipeline.run(recipe, ResultStore(tmp_path), base=teacher)


def test_the_teacher_against_itself_is_within_noise(teacher):
    _, windows = evaluation.eval_windows(teacher, EvalSpec(max_windows=8))
    metrics = evaluate_quality(teacher.model, windows, base=teacher.model)
    compared = metrics.vs_base()
    assert compared.ratio == 1.0 and compared.verdict == "within noise"
    interval = metrics.interval()
    assert interval.low < metrics.perplexity < interval.high


def test_an_8_bit_rtn_row_carries_its_interval_and_is_within_noise(teacher, tmp_path, capsys):
    # 8-bit RTN in groups of 32 moves the teacher's perplexity by ~0.01% on these 32 windows, well inside the
    # paired interval (about -0.004% to +0.027%)
    row = _run(teacher, tmp_path, (Step("quantize", {"method": "rtn", "bits": 8, "group_size": 32}),), 32)
    assert row.perplexity_ci_low < row.perplexity < row.perplexity_ci_high
    stored = ResultStore(tmp_path).get(row.id)
    assert (stored.perplexity_ci_low, stored.perplexity_ci_high) == (row.perplexity_ci_low, row.perplexity_ci_high)
    base = row.details["base_perplexity_interval"]
    assert base["low"] < row.base_perplexity < base["high"]
    vs_base = row.details["vs_base"]
    assert vs_base["verdict"] == "within noise" and vs_base["ratio_low"] < 1 < vs_base["ratio_high"]
    # paired is much tighter than the model's own interval
    assert vs_base["ratio_high"] - vs_base["ratio_low"] < 0.1 * (row.perplexity_ci_high - row.perplexity_ci_low) / \
        row.perplexity
    assert len(row.details["window_nll"]) == 32 and row.details["window_tokens"] == [255] * 32
    print_row(row, as_json=False)
    out = capsys.readouterr().out
    assert "vs base" in out and "within noise" in out and "worse" not in out
    assert f"± {(row.perplexity_ci_high - row.perplexity_ci_low) / 2:.3f}" in out
    assert "only 8,160 tokens scored: the interval is rough" in out  # 32 windows x 255 predicted tokens


def test_a_50_percent_magnitude_prune_is_worse_beyond_noise(teacher, tmp_path):
    row = _run(teacher, tmp_path, (Step("prune", {"method": "magnitude", "sparsity": 0.5}),), 16)
    vs_base = row.details["vs_base"]
    assert vs_base["verdict"] == "worse" and vs_base["ratio_low"] > 1
    assert row.perplexity_ci_low < row.perplexity < row.perplexity_ci_high


def test_one_window_row_has_no_interval_and_a_note(teacher, tmp_path, capsys):
    row = _run(teacher, tmp_path, (), 1)
    assert row.perplexity_ci_low is None and row.perplexity_ci_high is None
    assert row.details["perplexity_interval"]["notes"] == ["one window: no interval (score 2 or more windows for one)"]
    print_row(row, as_json=False)
    out = capsys.readouterr().out
    assert "no interval: one window" in out and "±" not in out
