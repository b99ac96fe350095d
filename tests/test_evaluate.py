"""Evaluation math on hand-computed examples; size and latency on tiny models."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.errors import CancelledError
from core.evaluate import busy_note, evaluate_quality, measure_latency, measure_size, score_batch, speed_ratio
from tests.helpers import tiny_causal_lm

# Logits rows of a bigram "model" over a vocabulary of 3: the logits at a position depend only on
# the token there. Row argmaxes are 0, 1 and 2.
MODEL_TABLE = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
# A different base: row argmaxes 2, 1, 0 (agrees with MODEL_TABLE only on row 1).
BASE_TABLE = [[0.0, 0.0, 2.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
WINDOWS = torch.tensor([[0, 2, 1, 1], [1, 0, 2, 2]])
E = math.e

# fp32 log-softmax inside score_batch: agreement with exact math is ~1e-7 relative, not 1e-9.
FP32_REL = 1e-6


class Bigram(nn.Module):
    """Returns ``table[input_ids]`` as logits, wrapped like a transformers output (``.logits``)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])


def _log_softmax(row: list[float]) -> list[float]:
    norm = math.log(sum(math.exp(x) for x in row))
    return [x - norm for x in row]


def _reference(table, base_table=None) -> dict:
    """Pure-Python mean NLL, top-1 accuracy, agreement and KL(base || model) over WINDOWS."""
    nll, correct, agree, kl, count = 0.0, 0, 0, 0.0, 0
    for window in WINDOWS.tolist():
        for current, target in itertools.pairwise(window):
            log_p = _log_softmax(table[current])
            nll -= log_p[target]
            correct += max(range(3), key=log_p.__getitem__) == target
            if base_table is not None:
                log_q = _log_softmax(base_table[current])
                agree += max(range(3), key=log_q.__getitem__) == max(range(3), key=log_p.__getitem__)
                kl += sum(math.exp(q) * (q - p) for q, p in zip(log_q, log_p, strict=True))
            count += 1
    return {"mean_nll": nll / count, "acc": correct / count, "agree": agree / count, "kl": kl / count}


# --- score_batch -------------------------------------------------------------------------------


def test_score_batch_nll_sum_by_hand():
    batch = WINDOWS[:1]  # [0, 2, 1, 1]: transitions 0->2, 2->1, 1->1
    logits = torch.tensor(MODEL_TABLE)[batch]  # [1, 4, 3]
    score = score_batch(logits, batch)
    # 0->2: logits [2,0,0], target 2: log(e^2 + 2) - 0;  top-1 is 0 (wrong)
    # 2->1: logits [0,0,1], target 1: log(e + 2) - 0;    top-1 is 2 (wrong)
    # 1->1: logits [0,1,0], target 1: log(e + 2) - 1;    top-1 is 1 (right)
    expected = math.log(E**2 + 2) + math.log(E + 2) + math.log(E + 2) - 1
    assert score.nll_sum == pytest.approx(expected, rel=FP32_REL)
    assert score.correct == 1
    assert score.count == 3
    assert score.agree == 0
    assert score.kl_sum == 0.0


def test_score_batch_ignores_the_last_position_logits():
    batch = WINDOWS[:1]
    logits = torch.tensor(MODEL_TABLE)[batch]
    changed = logits.clone()
    changed[0, -1] = torch.tensor([100.0, -100.0, 3.0])
    assert score_batch(changed, batch) == score_batch(logits, batch)


# --- evaluate_quality --------------------------------------------------------------------------


def test_perplexity_is_exp_of_mean_nll():
    model = Bigram(MODEL_TABLE)
    metrics = evaluate_quality(model, WINDOWS)
    scores = [score_batch(model(w[None]).logits.detach(), w[None]) for w in WINDOWS]
    mean_nll = sum(s.nll_sum for s in scores) / sum(s.count for s in scores)
    assert metrics.perplexity == pytest.approx(math.exp(mean_nll), rel=1e-9, abs=0)
    assert metrics.perplexity == pytest.approx(math.exp(_reference(MODEL_TABLE)["mean_nll"]), rel=FP32_REL)
    # Both windows: 2 of 6 next tokens are top-1.
    assert metrics.top1_acc == pytest.approx(2 / 6, abs=1e-12)
    assert (metrics.windows, metrics.seqlen, metrics.tokens_scored) == (2, 4, 6)
    assert metrics.top1_agreement is None
    assert metrics.kl_to_base is None


def test_batching_does_not_change_the_result():
    model = Bigram(MODEL_TABLE)
    one = evaluate_quality(model, WINDOWS, batch_size=1)
    two = evaluate_quality(model, WINDOWS, batch_size=2)
    assert two.perplexity == pytest.approx(one.perplexity, rel=1e-12)
    assert two.top1_acc == one.top1_acc


def test_model_against_itself_agrees_fully_with_zero_kl():
    model = Bigram(MODEL_TABLE)
    metrics = evaluate_quality(model, WINDOWS, base=model)
    assert metrics.top1_agreement == 1.0
    assert metrics.kl_to_base == pytest.approx(0.0, abs=1e-7)


def test_different_base_gives_hand_computed_kl_and_agreement():
    reference = _reference(MODEL_TABLE, BASE_TABLE)
    metrics = evaluate_quality(Bigram(MODEL_TABLE), WINDOWS, base=Bigram(BASE_TABLE))
    # Rows visited per window: [0, 2, 1] and [1, 0, 2]; argmaxes agree only on row 1.
    assert metrics.top1_agreement == pytest.approx(2 / 6, abs=1e-12)
    assert reference["agree"] == pytest.approx(2 / 6)
    assert metrics.kl_to_base > 0.1
    assert metrics.kl_to_base == pytest.approx(reference["kl"], rel=FP32_REL)
    # The base does not change the model's own quality.
    assert metrics.perplexity == pytest.approx(evaluate_quality(Bigram(MODEL_TABLE), WINDOWS).perplexity, rel=1e-12)


def test_progress_fractions_increase_to_one():
    seen: list[tuple[str, float]] = []
    evaluate_quality(Bigram(MODEL_TABLE), torch.cat([WINDOWS, WINDOWS[:1]]), on_progress=lambda *a: seen.append(a))
    fractions = [fraction for _stage, fraction in seen]
    assert fractions == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert fractions[-1] == 1.0
    assert {stage for stage, _ in seen} == {"evaluate"}


def test_progress_with_batches_ends_at_one():
    seen: list[float] = []
    evaluate_quality(Bigram(MODEL_TABLE), torch.cat([WINDOWS, WINDOWS[:1]]), batch_size=2,
                     on_progress=lambda _stage, fraction: seen.append(fraction))
    assert seen == pytest.approx([2 / 3, 1.0])


def test_cancel_raises_cancelled_error():
    with pytest.raises(CancelledError, match="after 0 of 2 windows"):
        evaluate_quality(Bigram(MODEL_TABLE), WINDOWS, cancel=lambda: True)


def test_cancel_midway_reports_progress_so_far():
    answers = iter([False, True])
    with pytest.raises(CancelledError, match="after 1 of 2 windows"):
        evaluate_quality(Bigram(MODEL_TABLE), WINDOWS, cancel=lambda: next(answers))


def test_cancel_returning_false_lets_the_work_finish():
    metrics = evaluate_quality(Bigram(MODEL_TABLE), WINDOWS, cancel=lambda: False)
    assert metrics.tokens_scored == 6


# --- measure_size ------------------------------------------------------------------------------


def test_size_counts_tied_embeddings_once():
    model = tiny_causal_lm("gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    every = sum(p.numel() for _n, p in model.named_parameters(remove_duplicate=False))
    size = measure_size(model)
    assert size.params == every - model.lm_head.weight.numel()
    assert size.size_bytes == 4 * size.params


def test_zeros_lower_nonzero_count_but_not_dense_bytes():
    model = tiny_causal_lm("gpt2")
    before = measure_size(model)
    weight = model.transformer.h[0].mlp.c_fc.weight  # Conv1D: [in, out], stored transposed
    half = weight.numel() // 2
    assert int(torch.count_nonzero(weight.view(-1)[:half])) == half
    with torch.no_grad():
        weight.view(-1)[:half] = 0
    after = measure_size(model)
    assert after.nonzero_params == before.nonzero_params - half
    assert after.params == before.params
    assert after.size_bytes == before.size_bytes


def test_bits_per_weight_follow_the_dtype():
    model = tiny_causal_lm("llama")
    assert measure_size(model).bits_per_weight == 32.0
    half = measure_size(model.half())
    assert half.bits_per_weight == 16.0
    assert half.size_bytes == 2 * half.params


def test_packed_modules_count_logical_weights_and_stored_bytes():
    class Packed(nn.Module):
        logical_params = 16  # 16 4-bit weights in 8 bytes
        logical_nonzero = 12

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("qweight", torch.zeros(8, dtype=torch.uint8))

    model = nn.Sequential(Packed())
    size = measure_size(model)
    assert (size.params, size.nonzero_params, size.size_bytes) == (16, 12, 8)
    assert size.bits_per_weight == 4.0


# --- measure_latency ---------------------------------------------------------------------------


def test_latency_on_tiny_llama_reports_its_setup():
    model = tiny_causal_lm("llama")
    metrics = measure_latency(model, torch.arange(10, 18), new_tokens=3, warmup=1, runs=2)
    assert metrics.prefill_ms > 0
    assert metrics.decode_tok_s > 0
    assert metrics.peak_mem_bytes > 0
    assert (metrics.prompt_tokens, metrics.new_tokens, metrics.runs) == (8, 3, 2)
    assert metrics.threads == torch.get_num_threads() == 1
    assert metrics.device == "cpu"
    assert metrics.dtype == "float32"
    assert set(metrics.as_dict()) >= {"prefill_ms", "decode_tok_s", "device", "dtype", "threads"}


def _ordered(figures: dict, name: str) -> bool:
    return figures[f"{name}_min"] <= figures[f"{name}_median"] <= figures[f"{name}_max"]


def test_latency_keeps_the_spread_of_its_runs():
    metrics = measure_latency(tiny_causal_lm("llama"), torch.arange(10, 18), new_tokens=3, warmup=1, runs=4)
    figures = metrics.as_dict()
    assert _ordered(figures, "prefill_ms") and _ordered(figures, "decode_tok_s")
    assert len(metrics.prefill_ms_runs) == len(metrics.decode_tok_s_runs) == 4
    assert min(metrics.decode_tok_s_runs) == metrics.decode_tok_s_min
    assert metrics.base is None and metrics.vs_base is None
    assert metrics.other_cpu_cores is not None and metrics.other_cpu_cores >= 0  # read from the per-CPU times
    assert metrics.busy == (metrics.busy_note is not None)


def test_latency_with_a_base_times_both_in_turns_and_pairs_the_ratio():
    model, base = tiny_causal_lm("llama"), tiny_causal_lm("gpt2")
    metrics = measure_latency(model, torch.arange(10, 18), new_tokens=3, warmup=1, runs=3, base=base)
    assert metrics.base["loop"] != metrics.loop  # each model was timed in its own loop (llama: the static cache)
    assert _ordered(metrics.base, "prefill_ms") and _ordered(metrics.base, "decode_tok_s")
    assert len(metrics.base["decode_tok_s_runs"]) == 3
    ratio = metrics.vs_base
    assert ratio["runs"] == 3 and ratio["paired"]
    assert ratio["decode_min"] <= ratio["decode"] <= ratio["decode_max"]
    assert ratio["prefill_min"] <= ratio["prefill"] <= ratio["prefill_max"]
    per_run = [m / b for m, b in zip(metrics.decode_tok_s_runs, metrics.base["decode_tok_s_runs"], strict=True)]
    assert ratio["decode"] == pytest.approx(sorted(per_run)[1], rel=1e-9)  # the median of the paired run ratios


def test_speed_ratio_is_the_median_of_per_run_ratios():
    # decode seconds 1, 2, 4 against the base's 2, 2, 2: 2x, 1x, 0.5x as fast; prefill 0.1 s against 0.2 s: 2x
    ratio = speed_ratio([0.1, 0.1, 0.1], [1.0, 2.0, 4.0], [0.2, 0.2, 0.2], [2.0, 2.0, 2.0])
    assert (ratio.decode, ratio.decode_min, ratio.decode_max) == (1.0, 0.5, 2.0)
    assert ratio.prefill == pytest.approx(2.0) and ratio.runs == 3
    assert ratio.within_spread and ratio.as_dict()["within_spread"]
    assert not speed_ratio([0.1], [1.0], [0.1], [1.5]).within_spread


def test_busy_note_reads_other_processes_first_then_the_load_average():
    assert busy_note(load_avg_1m=2.1, other_cpu_cores=0.1, threads=2) is None  # our own threads make the load
    note = busy_note(load_avg_1m=3.4, other_cpu_cores=1.3, threads=2)
    assert note.startswith("machine busy while timing: other processes used 1.3 CPU cores (load average 3.4, 2 ")
    assert busy_note(load_avg_1m=3.4, other_cpu_cores=None, threads=2).startswith(
        "machine busy while timing: load average 3.4, above the 2 timing threads")
    assert busy_note(load_avg_1m=1.9, other_cpu_cores=None, threads=2) is None
    assert busy_note(load_avg_1m=None, other_cpu_cores=None, threads=2) is None
