"""Pruning: masks and scores on hand-made matrices, SparseGPT against least squares, and the layer walk
on a tiny model of every family (selected layers only, exact sparsity, data through pruned blocks)."""

from __future__ import annotations

import copy
import math
import time

import pytest
import torch
import torch.nn.functional as F

from core.calibration import HessianAccumulator, reconstruction_error
from core.calibration.walk import sequential_walk
from core.errors import CancelledError, SpecError
from core.layers import block_linear_layers, decoder_blocks, linear_layers, weight_matrix
from core.prune import (
    METHODS,
    PruneSpec,
    nm_mask,
    prune,
    prune_,
    row_mask,
    sparsegpt_prune,
    threshold_mask,
    unstructured_mask,
    wanda_scores,
)
from core.prune.preview import ThresholdPreview
from core.prune.recovery import finetune_masked_
from tests.helpers import CAUSAL_FAMILIES

T, F_ = True, False
# Every |w| is distinct, so each mask below has exactly one right answer.
W = torch.tensor([
    [0.90, -0.10, 0.50, -0.70, 0.20, 0.05],
    [-0.30, 0.80, -0.15, 0.60, -0.45, 0.25],
    [0.35, -0.55, 0.12, -0.95, 0.65, -0.02],
    [-0.85, 0.40, -0.75, 0.08, -0.22, 1.00],
])


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated_inputs(tokens: int, columns: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Inputs [tokens, columns] with correlated columns of unequal scale (as real activations have)."""
    g = _generator(seed)
    mixing = torch.randn(columns, columns, generator=g) * torch.linspace(0.2, 2.0, columns)
    return (torch.randn(tokens, columns, generator=g) @ mixing).to(dtype)


def _output_error(w_old: torch.Tensor, w_new: torch.Tensor, x: torch.Tensor) -> float:
    """||X (W - W')^T||_F / ||X W^T||_F computed from the activations themselves."""
    return float(torch.linalg.norm(x @ (w_old - w_new).t()) / torch.linalg.norm(x @ w_old.t()))


# ---- masks and scores ----


def test_threshold_mask_keeps_magnitudes_at_or_above_the_threshold():
    expected = [[T, F_, T, T, F_, F_], [T, T, F_, T, T, F_], [T, T, F_, T, T, F_], [T, T, T, F_, F_, T]]
    assert threshold_mask(W, 0.3).tolist() == expected  # |-0.30| == 0.3 is kept


def test_unstructured_mask_drops_the_lowest_of_the_whole_matrix():
    # 8 of 24 dropped: 0.02, 0.05, 0.08, 0.10, 0.12, 0.15, 0.20, 0.22 wherever they are
    expected = [[T, F_, T, T, F_, F_], [T, T, F_, T, T, T], [T, T, F_, T, T, F_], [T, T, T, F_, F_, T]]
    assert unstructured_mask(W.abs(), 1 / 3).tolist() == expected


def test_row_mask_drops_the_same_count_in_every_row():
    # 2 of 6 per row: row 0 keeps 0.20 (dropped globally) and row 1 loses 0.25 (kept globally)
    expected = [[T, F_, T, T, T, F_], [T, T, F_, T, T, F_], [T, T, F_, T, T, F_], [T, T, T, F_, F_, T]]
    assert row_mask(W.abs(), 1 / 3).tolist() == expected


def test_zero_sparsity_keeps_everything():
    assert unstructured_mask(W.abs(), 0.0).all() and row_mask(W.abs(), 0.0).all()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_exactly_the_n_largest_of_every_m(n, m):
    scores = torch.rand(6, 16, generator=_generator(n * m))
    keep = nm_mask(scores, n, m)
    groups, kept = scores.reshape(6, -1, m), keep.reshape(6, -1, m)
    assert (kept.sum(dim=2) == n).all()
    smallest_kept = groups.masked_fill(~kept, math.inf).amin(dim=2)
    largest_dropped = groups.masked_fill(kept, -math.inf).amax(dim=2)
    assert (smallest_kept > largest_dropped).all()


def test_nm_mask_refuses_a_width_that_is_not_a_multiple_of_m():
    with pytest.raises(SpecError, match=r"10 input columns.*multiple of 4"):
        nm_mask(torch.rand(3, 10), 2, 4)


def test_wanda_scores_weigh_magnitudes_by_input_norms():
    weight = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
    act_norm = torch.tensor([3.0, 0.5, 1.0])
    scores = wanda_scores(weight, act_norm)
    assert scores.tolist() == [[3.0, 1.0, 3.0], [12.0, 2.5, 6.0]]
    # magnitude would drop column 0 in row 0; Wanda drops column 1 (small weight on a quiet input) in both rows
    assert row_mask(scores, 1 / 3).tolist() == [[T, F_, T], [T, F_, T]]
    assert row_mask(weight.abs(), 1 / 3).tolist() == [[F_, T, T], [F_, T, T]]


def test_hessian_accumulator_is_the_running_mean_over_uneven_batches():
    x = torch.randn(12, 4, generator=_generator(), dtype=torch.float64)
    acc = HessianAccumulator(4)
    for batch in (x[:3], x[3:8].reshape(1, 5, 4), x[8:9], x[9:]):  # 3, 5, 1, 3 tokens; one with a batch dim
        acc.add_batch(batch)
    assert acc.tokens == 12
    torch.testing.assert_close(acc.hessian.double(), 2 / 12 * x.t() @ x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc.act_sq_sum.double(), x.square().sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(acc.act_norm.double(), x.norm(dim=0), rtol=1e-5, atol=1e-6)


def test_reconstruction_error_equals_the_error_on_the_activations():
    g = _generator(1)
    x = torch.randn(100, 8, generator=g, dtype=torch.float64)
    w_old = torch.randn(5, 8, generator=g, dtype=torch.float64)
    w_new = w_old * (torch.rand(5, 8, generator=g) > 0.5) + 0.01 * torch.randn(5, 8, generator=g)
    direct = _output_error(w_old, w_new, x)
    assert reconstruction_error(w_old, w_new, 2 / 100 * x.t() @ x) == pytest.approx(direct, rel=1e-10)
    acc = HessianAccumulator(8)
    acc.add_batch(x)
    assert reconstruction_error(w_old.float(), w_new.float(), acc.hessian) == pytest.approx(direct, rel=1e-4)
    assert reconstruction_error(w_old, w_old, acc.hessian) == 0.0


# ---- SparseGPT ----


def test_sparsegpt_beats_magnitude_and_wanda_on_the_same_layer():
    x = _correlated_inputs(256, 16)
    weight = torch.randn(8, 16, generator=_generator(2))
    pruned, _ = sparsegpt_prune(weight, 2 / 256 * x.t() @ x, 0.5)
    magnitude = weight * unstructured_mask(weight.abs(), 0.5)
    wanda = weight * row_mask(wanda_scores(weight, x.norm(dim=0)), 0.5)
    assert _output_error(weight, pruned, x) < min(_output_error(weight, magnitude, x), _output_error(weight, wanda, x))


@pytest.mark.parametrize(("sparsity", "blocksize"), [(0.5, 128), (0.5, 4), (0.3, 5), (0.7, 1)])
def test_sparsegpt_reaches_the_exact_sparsity_for_any_blocksize(sparsity, blocksize):
    x = _correlated_inputs(256, 16)
    weight = torch.randn(8, 16, generator=_generator(2))
    pruned, keep = sparsegpt_prune(weight, x.t() @ x, sparsity, blocksize=blocksize)
    assert int((pruned == 0).sum()) == round(sparsity * 128) == int((~keep).sum())
    assert (pruned[~keep] == 0).all()


def test_sparsegpt_matches_least_squares_when_the_pruned_columns_come_first():
    # Columns are solved left to right and each pruned weight's error moves onto the columns to its right.
    # So the result is the least-squares optimum of the kept weights exactly when every pruned column
    # precedes every kept one: tiny weights in the first three columns make SparseGPT pick that mask.
    x = _correlated_inputs(256, 6, seed=3, dtype=torch.float64)
    weight = torch.tensor([[0.01, -0.02, 0.015, 1.0, -0.8, 0.9]], dtype=torch.float64)
    pruned, keep = sparsegpt_prune(weight, x.t() @ x, 0.5, blocksize=128, percdamp=0.0)
    assert keep.tolist() == [[F_, F_, F_, T, T, T]]
    optimum = torch.linalg.lstsq(x[:, 3:], x @ weight[0]).solution
    torch.testing.assert_close(pruned[0, 3:], optimum, rtol=1e-9, atol=1e-12)
    assert (pruned[0, :3] == 0).all()
    assert _output_error(weight, pruned, x) < _output_error(weight, weight * keep, x)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8)])
def test_sparsegpt_nm_keeps_n_of_every_m_and_beats_magnitude_and_wanda(n, m):
    # 64 columns: the error of a pruned group is compensated by the columns to its right
    x = _correlated_inputs(256, 64, seed=4)
    weight = torch.randn(8, 64, generator=_generator(5))
    pruned, keep = sparsegpt_prune(weight, x.t() @ x, 0.0, n=n, m=m, blocksize=6)  # 6 rounds down to a multiple of m
    assert ((pruned != 0).reshape(8, -1, m).sum(dim=2) == n).all()
    assert torch.equal(keep, pruned != 0)
    magnitude = weight * nm_mask(weight.abs(), n, m)
    wanda = weight * nm_mask(wanda_scores(weight, x.norm(dim=0)), n, m)
    assert _output_error(weight, pruned, x) < min(_output_error(weight, magnitude, x), _output_error(weight, wanda, x))


def test_sparsegpt_adds_damping_with_a_warning_when_cholesky_fails():
    weight = torch.randn(3, 6, generator=_generator(6), dtype=torch.float64)
    singular = torch.ones(6, 6, dtype=torch.float64)  # rank 1: the second pivot is exactly zero
    with pytest.warns(UserWarning, match="percdamp"):
        pruned, _ = sparsegpt_prune(weight, singular, 0.5, percdamp=0.0)
    assert torch.isfinite(pruned).all() and int((pruned == 0).sum()) == 9


def test_sparsegpt_zeroes_weights_on_dead_inputs():
    x = _correlated_inputs(64, 8, seed=7)
    x[:, 2] = 0.0  # an input that is always zero: its Hessian row and column are zero
    weight = torch.randn(4, 8, generator=_generator(8))
    pruned, _ = sparsegpt_prune(weight, x.t() @ x, 0.25)
    assert (pruned[:, 2] == 0).all() and torch.isfinite(pruned).all()
    assert int((pruned == 0).sum()) == 8


# ---- specs ----


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "prune", "sparsity": 0.5}, "'prune' is not known.*magnitude, wanda, sparsegpt"),
        ({"method": "magnitude", "sparsity": 1.0}, r"\[0, 1\).*got 1.0"),
        ({"method": "magnitude", "sparsity": -0.1}, r"\[0, 1\)"),
        ({"method": "wanda", "threshold": 0.1}, "threshold=0.1 works only with method magnitude"),
        ({"method": "magnitude", "threshold": -1.0}, ">= 0"),
        ({"method": "magnitude", "sparsity": 0.5, "threshold": 0.1}, "not both"),
        ({"method": "magnitude"}, "give sparsity"),
        ({"method": "magnitude", "pattern": "3:2"}, "'3:2' is not understood.*'2:4'"),
        ({"method": "magnitude", "pattern": "two:four"}, "not understood"),
        ({"method": "sparsegpt", "pattern": "2:4", "sparsity": 0.3}, "implies sparsity 0.5"),
        ({"method": "wanda", "sparsity": 0.5, "scope": "global"}, "only with method magnitude"),
        ({"method": "magnitude", "sparsity": 0.5, "scope": "everywhere"}, "'everywhere' is not known"),
        ({"method": "sparsegpt", "sparsity": 0.5, "blocksize": 0}, "blocksize"),
        ({"method": "wanda", "sparsity": 0.5, "sparsty": 0.2}, "unknown prune parameter.*sparsty"),
        ({"sparsity": 0.5}, "needs a method"),
    ],
)
def test_spec_refusals_say_what_was_given_and_what_is_allowed(params, message):
    with pytest.raises(SpecError, match=message):
        PruneSpec.from_dict(params)


def test_spec_reads_the_recipe_form_and_round_trips():
    spec = PruneSpec.from_dict({"method": "wanda", "sparsity": 0.5, "pattern": "unstructured", "exclude": ["*mlp*"]})
    assert spec.exclude == ("*mlp*",) and spec.include == ("*",) and spec.sparsity == 0.5
    assert PruneSpec.from_dict(spec.as_dict()) == spec


@pytest.mark.parametrize(("pattern", "implied"), [("2:4", 0.5), ("4:8", 0.5), ("1:4", 0.75)])
def test_nm_pattern_implies_the_sparsity(pattern, implied):
    spec = PruneSpec("sparsegpt", pattern=pattern)
    assert spec.sparsity == implied and spec.nm == tuple(map(int, pattern.split(":")))
    assert PruneSpec.from_dict(spec.as_dict()) == spec


# ---- the layer walk on tiny models ----

CALIBRATION = torch.randint(0, 256, (4, 16), generator=_generator(9))


@torch.no_grad()
def _loss(model: torch.nn.Module, ids: torch.Tensor) -> float:
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)))


def _selected_keys(model: torch.nn.Module) -> set[str]:
    return {f"{name}.weight" for name, _ in block_linear_layers(model)}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_walk_prunes_exactly_the_selected_layers(tiny, family, method):
    base = tiny[family]
    before = {key: value.clone() for key, value in base.state_dict().items()}
    pruned, report = prune(base, PruneSpec(method, 0.5), calibration=CALIBRATION)
    layers = dict(block_linear_layers(pruned))
    assert [layer.name for layer in report.layers] == list(layers)
    for layer in report.layers:
        weight = weight_matrix(layers[layer.name])
        assert layer.shape == tuple(weight.shape)
        assert int((weight == 0).sum()) * 2 == weight.numel() and layer.sparsity == 0.5
        assert layer.rel_error is not None and 0 < layer.rel_error < 1
    assert report.sparsity == 0.5 and report.method == method and report.pattern == "unstructured"
    for key, value in pruned.state_dict().items():  # embeddings, norms, biases, lm_head untouched
        if key not in _selected_keys(pruned):
            assert torch.equal(value, before[key]), key
    assert all(torch.equal(value, before[key]) for key, value in base.state_dict().items())  # base not mutated
    assert math.isfinite(_loss(pruned, CALIBRATION))


@pytest.mark.parametrize(
    ("family", "method", "pattern"),
    [("llama", "sparsegpt", "2:4"), ("gpt2", "wanda", "4:8"), ("opt", "magnitude", "2:4"),
     ("gpt_neox", "sparsegpt", "1:4")],
)
def test_walk_gives_exact_nm_on_every_selected_layer(tiny, family, method, pattern):
    n, m = map(int, pattern.split(":"))
    pruned, report = prune(tiny[family], PruneSpec(method, pattern=pattern), calibration=CALIBRATION)
    for name, layer in block_linear_layers(pruned):
        weight = weight_matrix(layer)
        assert ((weight != 0).reshape(weight.shape[0], -1, m).sum(dim=2) == n).all(), name
    assert report.sparsity == pytest.approx(1 - n / m) and report.pattern == pattern
    assert math.isfinite(_loss(pruned, CALIBRATION))


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_walk_feeds_each_block_the_outputs_of_the_pruned_blocks_before_it(tiny, family):
    model = copy.deepcopy(tiny[family])
    blocks_name, blocks = decoder_blocks(model)
    first0 = next(linear_layers(blocks[0], prefix=f"{blocks_name}.0"))[0]
    first1 = next(linear_layers(blocks[1], prefix=f"{blocks_name}.1"))[0]  # reads block 1's input (normed)
    seen = {}

    def solve(name, layer, stats):
        seen[name] = stats.hessian.clone()
        weight = weight_matrix(layer)
        weight.mul_(unstructured_mask(weight.abs(), 0.5))

    sequential_walk(model, CALIBRATION, solve)
    dense, final = _forward_hessians(tiny[family], (first0, first1)), _forward_hessians(model, (first0, first1))
    torch.testing.assert_close(seen[first0], dense[first0], rtol=1e-4, atol=1e-6)  # block 0 sees the dense input
    torch.testing.assert_close(seen[first1], final[first1], rtol=1e-4, atol=1e-6)  # block 1 sees pruned block 0
    assert (seen[first1] - dense[first1]).norm() > 0.01 * dense[first1].norm()


def _forward_hessians(model: torch.nn.Module, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Hessians of the named layers from plain whole-model forwards, one calibration sample at a time."""
    modules = dict(model.named_modules())
    stats = {name: HessianAccumulator(weight_matrix(modules[name]).shape[1]) for name in names}
    handles = [modules[name].register_forward_hook(lambda _m, args, _o, acc=stats[name]: acc.add_batch(args[0]))
               for name in names]
    for sample in CALIBRATION:
        _loss(model, sample.unsqueeze(0))
    for handle in handles:
        handle.remove()
    return {name: acc.hessian for name, acc in stats.items()}


def test_magnitude_without_calibration_reports_no_errors(tiny):
    pruned, report = prune(tiny["opt"], PruneSpec("magnitude", 0.25))
    assert report.sparsity == 0.25 and all(layer.rel_error is None for layer in report.layers)


def test_global_magnitude_cuts_one_threshold_across_layers(tiny):
    base = tiny["llama"]
    pruned, report = prune(base, PruneSpec("magnitude", 0.3, scope="global"))
    old = torch.cat([weight_matrix(layer).abs().flatten() for _, layer in block_linear_layers(base)])
    new = torch.cat([weight_matrix(layer).flatten() for _, layer in block_linear_layers(pruned)])
    assert int((new == 0).sum()) == round(0.3 * new.numel())
    assert old[new == 0].max() <= old[new != 0].min()
    assert len({round(layer.sparsity, 3) for layer in report.layers}) > 1  # layers differ; the total is exact


def test_global_magnitude_is_exact_even_when_every_weight_ties(tiny):
    model = copy.deepcopy(tiny["gpt_neox"])
    with torch.no_grad():
        for _, layer in block_linear_layers(model):
            layer.weight.fill_(0.5)
    report = prune_(model, PruneSpec("magnitude", 0.3, scope="global"))
    total = sum(math.prod(layer.shape) for layer in report.layers)
    zeros = sum(int((weight_matrix(layer) == 0).sum()) for _, layer in block_linear_layers(model))
    assert zeros == round(0.3 * total)


def test_threshold_preview_matches_a_direct_count_and_threshold_pruning(tiny):
    model = tiny["gpt2"]
    preview = ThresholdPreview.from_model(model, exclude=("*attn*",))
    layers = dict(block_linear_layers(model, exclude=("*attn*",)))
    assert set(preview.sorted) == set(layers) and all("mlp" in name for name in layers)
    for threshold in (0.0, 0.005, 0.02, 0.05, 10.0):
        overall, per_layer = preview.sparsity_at(threshold)
        drops = {name: int((~threshold_mask(weight_matrix(layer), threshold)).sum()) for name, layer in layers.items()}
        assert per_layer == {name: drops[name] / weight_matrix(layers[name]).numel() for name in layers}
        assert overall == sum(drops.values()) / preview.total
    threshold = preview.threshold_for(0.4)
    assert preview.sparsity_at(threshold)[0] == round(0.4 * preview.total) / preview.total
    _, report = prune(model, PruneSpec("magnitude", threshold=threshold, exclude=("*attn*",)))
    assert {layer.name: layer.sparsity for layer in report.layers} == preview.sparsity_at(threshold)[1]


def test_threshold_preview_answers_a_slider_move_fast():
    preview = ThresholdPreview({f"layer{i}": torch.linspace(0, 1, 2**19) for i in range(30)})
    preview.sparsity_at(0.5)
    started = time.perf_counter()
    overall, per_layer = preview.sparsity_at(0.25)
    assert time.perf_counter() - started < 0.1
    assert overall == pytest.approx(0.25, abs=1e-5) and len(per_layer) == 30


def test_include_and_exclude_pick_the_layers(tiny):
    pruned, report = prune(tiny["llama"], PruneSpec("magnitude", 0.5, exclude=("*mlp*",)))
    assert report.layers and all("mlp" not in layer.name for layer in report.layers)
    for name, layer in block_linear_layers(pruned):
        assert bool((weight_matrix(layer) == 0).any()) == ("mlp" not in name)
    with pytest.raises(SpecError, match="no linear layer.*nothing"):
        prune(tiny["llama"], PruneSpec("magnitude", 0.5, include=("nothing",)))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_data_aware_methods_need_calibration(tiny, method):
    with pytest.raises(SpecError, match=f"{method} needs calibration text"):
        prune_(copy.deepcopy(tiny["llama"]), PruneSpec(method, 0.5))


def test_progress_per_layer_and_cancel_between_layers(tiny):
    model, calls = copy.deepcopy(tiny["llama"]), []
    report = prune_(model, PruneSpec("wanda", 0.5), CALIBRATION, on_progress=lambda *call: calls.append(call))
    total = len(report.layers)
    assert [fraction for _, fraction in calls] == pytest.approx([(i + 1) / total for i in range(total)])
    assert calls[0][0].endswith(report.layers[0].name)
    model, calls = copy.deepcopy(tiny["llama"]), []
    with pytest.raises(CancelledError, match="3 of 14 layers"):
        prune_(model, PruneSpec("sparsegpt", 0.5), CALIBRATION, on_progress=lambda *call: calls.append(call),
               cancel=lambda: len(calls) >= 3)
    pruned = [bool((weight_matrix(layer) == 0).any()) for _, layer in block_linear_layers(model)]
    assert pruned == [True] * 3 + [False] * 11  # partially pruned: callers work on a copy


def test_finetune_keeps_zeros_and_lowers_the_loss(tiny):
    model = copy.deepcopy(tiny["llama"])
    prune_(model, PruneSpec("magnitude", 0.5))
    zeros = {name: weight_matrix(layer) == 0 for name, layer in block_linear_layers(model)}
    batches = torch.randint(0, 256, (8, 16), generator=_generator(10))
    before = _loss(model, batches)
    losses = finetune_masked_(model, batches, steps=10, lr=1e-3)
    assert len(losses) == 10 and all(math.isfinite(loss) for loss in losses)
    for name, layer in block_linear_layers(model):
        assert torch.equal(weight_matrix(layer) == 0, zeros[name]), name
    assert _loss(model, batches) < before - 0.1
    assert not model.training
    asked: list[int] = []  # a cancel stops before the third step: the two steps done are kept, zeros intact
    stopped = finetune_masked_(model, batches, steps=5, lr=1e-3, cancel=lambda: len(asked.append(1) or asked) > 2)
    assert len(stopped) == 2 and len(asked) == 3
    for name, layer in block_linear_layers(model):
        assert torch.equal(weight_matrix(layer) == 0, zeros[name]), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparsegpt_on_cuda_matches_cpu(tiny):
    x = _correlated_inputs(256, 64, seed=11)
    weight, hessian = torch.randn(32, 64, generator=_generator(12)), x.t() @ x
    on_cpu, _ = sparsegpt_prune(weight, hessian, 0.5, blocksize=16)
    on_gpu, keep = sparsegpt_prune(weight.cuda(), hessian.cuda(), 0.5, blocksize=16)
    assert on_gpu.device.type == "cuda" and keep.device.type == "cuda"
    assert int((on_gpu == 0).sum()) == 1024
    assert _output_error(weight, on_gpu.cpu(), x) == pytest.approx(_output_error(weight, on_cpu, x), rel=0.05)
    model = copy.deepcopy(tiny["llama"]).cuda()
    report = prune_(model, PruneSpec("sparsegpt", pattern="2:4"), CALIBRATION)
    assert report.sparsity == 0.5 and math.isfinite(_loss(model, CALIBRATION.cuda()))
