"""The sensitivity atlas (core.plan.build, atlas, cache, request) on the tiny Llama: costs, predictions, cache."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from core.calibration.gradients import output_gradient_squares
from core.calibration.spec import CalibrationSpec
from core.calibration.tail import logits_from_block
from core.calibration.walk import capture_block_inputs
from core.errors import CancelledError
from core.evaluate.quality import score_batch
from core.layers import block_linear_layers, weight_matrix
from core.plan import request as request_module
from core.plan.atlas import Atlas, PowerFit, fit_power
from core.plan.build import build_atlas
from core.plan.cache import list_atlases
from core.plan.compress import compressed_weight
from core.plan.menu import prune_menu, quantize_menu
from core.plan.proxy import diagonal_cost, fisher_cost, output_error, spearman
from core.plan.request import AtlasRequest, atlas_for
from tests.helpers import tiny_tokenizer

MENU = quantize_menu("rtn", (2, 3, 4), (16,))


def windows(samples: int, seqlen: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, len(tiny_tokenizer()), (samples, seqlen), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def measured(tiny) -> Atlas:
    return build_atlas(copy.deepcopy(tiny["llama"]), "tiny-llama", MENU, windows(6), windows(2, seed=1), True)


def test_the_tail_of_a_model_gives_its_own_logits(tiny):
    model, ids = tiny["llama"], windows(2)
    inputs = capture_block_inputs(model, ids)
    with torch.no_grad():
        full = model(input_ids=ids[:1], use_cache=False).logits
        hidden = inputs[0].run(model.model.layers[0])
    assert torch.allclose(logits_from_block(model, 0, inputs[0].hidden, ids[:1]), full, atol=1e-5)
    assert torch.allclose(logits_from_block(model, 1, hidden, ids[:1]), full, atol=1e-5)
    assert len(model.model.layers) == 2  # the block list is put back


def test_a_measured_atlas_holds_every_cost_and_leaves_the_model_as_it_was(tiny, measured):
    layers = block_linear_layers(tiny["llama"])
    assert [layer.name for layer in measured.layers] == [name for name, _ in layers]
    for table in (measured.proxy, measured.kl, measured.nll):
        assert table.shape == (len(layers), 3)
    assert (measured.kl >= 0).all() and (measured.proxy >= 0).all()
    assert (measured.proxy[:, 0] > measured.proxy[:, 2]).all()  # 2 bits err more than 4 on every layer
    assert measured.kl.sum(axis=0)[0] > measured.kl.sum(axis=0)[2]
    assert len(measured.uniform_nll) == 3 and measured.uniform_kl[0] > measured.uniform_kl[2]
    rho = measured.spearman()
    assert -1 <= rho["all"] <= 1 and len(rho["per_option"]) == 3
    assert set(measured.timings) >= {"statistics_s", "solve_s", "measure_s", "total_s"}


def test_a_measured_cost_is_the_model_scored_with_only_that_layer_changed(tiny, measured):
    model, heldout = copy.deepcopy(tiny["llama"]), windows(2, seed=1)
    name, layer = block_linear_layers(model)[5]
    from core.calibration.walk import collect_statistics

    stats = collect_statistics(model.model.layers[0], [(name, layer)], capture_block_inputs(model, windows(6)))
    with torch.no_grad():
        base = [model(input_ids=heldout[i : i + 1], use_cache=False).logits for i in range(2)]
        weight_matrix(layer).copy_(compressed_weight(weight_matrix(layer), MENU.options[0], "rtn", stats[name]))
        scores = [score_batch(model(input_ids=heldout[i : i + 1], use_cache=False).logits, heldout[i : i + 1], base[i])
                  for i in range(2)]
    kl = sum(s.kl_sum for s in scores) / sum(s.count for s in scores)
    assert measured.kl[5, 0] == pytest.approx(kl, rel=1e-3, abs=1e-7)


def test_the_proxy_is_the_layers_output_error():
    generator = torch.Generator().manual_seed(2)
    x, w = torch.randn(200, 16, generator=generator), torch.randn(8, 16, generator=generator)
    approx = w.round()
    hessian = 2 * x.T @ x / 200
    assert output_error(w, approx, hessian) == pytest.approx(float((x @ (w - approx).T).square().sum()) / 200, rel=1e-5)
    assert diagonal_cost(w, approx, torch.diag(torch.diagonal(hessian))) == pytest.approx(
        output_error(w, approx, torch.diag(torch.diagonal(hessian))))


def test_output_gradients_are_the_losss_gradient_on_each_output(tiny):
    model, ids = copy.deepcopy(tiny["llama"]), windows(2)
    layer = model.model.layers[1].mlp.down_proj
    found = output_gradient_squares(model, [layer], ids, "test")[0]
    assert all(p.grad is None for p in model.parameters())  # gradients of the outputs only
    kept = []

    def keep(_module, _args, out) -> None:  # noqa: ANN001
        out.retain_grad()
        kept.append(out)

    handle = layer.register_forward_hook(keep)
    expected = torch.zeros(layer.out_features)
    for row in range(2):
        logits = model(input_ids=ids[row : row + 1], use_cache=False).logits
        torch.nn.functional.cross_entropy(logits[0, :-1], ids[row, 1:], reduction="sum").backward()
        expected += kept[-1].grad[0].square().sum(dim=0)
    handle.remove()
    assert torch.allclose(found, expected / (2 * ids.shape[1]), rtol=1e-4, atol=1e-12)


def test_the_gradient_weighted_proxy_is_a_weighted_output_error():
    generator = torch.Generator().manual_seed(3)
    x, w = torch.randn(100, 8, generator=generator), torch.randn(4, 8, generator=generator)
    approx, hessian = w.round(), 2 * x.T @ x / 100
    assert fisher_cost(w, approx, hessian, torch.full((4,), 2.0)) == pytest.approx(output_error(w, approx, hessian))
    rows = torch.tensor([1.0, 0.0, 0.0, 0.0])
    delta = w - approx
    assert fisher_cost(w, approx, hessian, rows) == pytest.approx(float(delta[0] @ hessian @ delta[0]) / 4, rel=1e-5)


def test_spearman_of_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.866, abs=1e-3)


def test_the_power_fit_passes_through_two_points():
    fit = fit_power([1.0, 4.0], [0.1, 0.8])
    assert fit(1.0) == pytest.approx(0.1) and fit(4.0) == pytest.approx(0.8) and fit.gamma == pytest.approx(1.5)
    assert fit.inverse(fit(2.5)) == pytest.approx(2.5)
    assert fit_power([2.0], [0.5]) == PowerFit(0.25, 1.0)


def test_a_prune_menu_atlas(tiny):
    atlas = build_atlas(copy.deepcopy(tiny["llama"]), "tiny", prune_menu("wanda", (0.0, 0.5, 0.75)), windows(4),
                        windows(1, seed=1), False)
    assert atlas.kl is None and atlas.spearman() is None
    assert np.allclose(atlas.proxy[:, 0], 0) and (atlas.proxy[:, 2] > atlas.proxy[:, 1]).all()


def test_an_atlas_reports_progress_and_stops_on_cancel(tiny):
    model = copy.deepcopy(tiny["llama"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    build_atlas(model, "tiny", MENU, windows(2), windows(1), False, on_progress=lambda s, f: seen.append((s, f)))
    assert seen[-1][1] == 1.0 and seen[0][0] == "atlas: gradients"
    assert any(stage.startswith("atlas (proxy): model.layers.0") for stage, _ in seen)
    calls = iter(range(100))
    with pytest.raises(CancelledError, match="nothing was cached"):
        build_atlas(model, "tiny", MENU, windows(2), windows(1), True, cancel=lambda: next(calls) >= 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_atlases_are_cached_by_model_text_and_menu(llama, text_file, tmp_path, monkeypatch):
    from core.models.loading import load

    loaded = load(llama)
    request = AtlasRequest(llama, MENU, "proxy", CalibrationSpec(str(text_file), samples=4, seqlen=32), heldout=1)
    first = atlas_for(loaded.model, loaded.tokenizer, "sample", request, tmp_path)
    monkeypatch.setattr(request_module, "build_atlas", lambda *a, **k: pytest.fail("the cache was not used"))
    again = atlas_for(loaded.model, loaded.tokenizer, "sample", request, tmp_path)
    assert again.key == first.key and np.allclose(again.proxy, first.proxy)
    assert [a.key for a in list_atlases(tmp_path)] == [first.key]
    monkeypatch.undo()
    other = AtlasRequest(llama, quantize_menu("rtn", (3, 4), (16,)), "proxy", request.calibration, heldout=1)
    assert atlas_for(loaded.model, loaded.tokenizer, "sample", other, tmp_path).key != first.key
    with torch.no_grad():
        weight_matrix(block_linear_layers(loaded.model)[0][1]).mul_(2)  # other weights, another atlas
    assert atlas_for(loaded.model, loaded.tokenizer, "sample", request, tmp_path).key != first.key


def test_an_atlas_round_trips_through_plain_data(measured):
    again = Atlas.from_dict(measured.to_dict())
    assert np.array_equal(again.kl, measured.kl) and again.menu == measured.menu and again.layers == measured.layers
    sub = measured.restricted([1, 2])
    assert sub.menu.labels == ["w3 g16", "w4 g16"] and sub.uniform_nll == measured.uniform_nll[1:]


def test_atlas_windows_start_with_the_bos_of_a_tokenizer_that_adds_one(text_file):
    from core import data
    from tests.helpers import family_tokenizer

    request = AtlasRequest("tiny", MENU, "proxy", CalibrationSpec(str(text_file), samples=4, seqlen=32), heldout=2)
    with_bos, plain = family_tokenizer("gemma3"), tiny_tokenizer()
    bos = data.added_bos(with_bos)
    calibration, heldout = request_module.windows_for(request, with_bos, "sample")
    assert bos is not None and calibration.shape == (4, 32) and heldout.shape == (2, 32)
    assert (calibration[:, 0] == bos).all() and (heldout[:, 0] == bos).all()
    assert not (torch.cat([calibration, heldout])[:, 1:] == bos).any()
    assert data.added_bos(plain) is None  # a tokenizer that adds none: windows are drawn text only
    model = torch.nn.Linear(2, 2)
    assert request.settings(model, bos)["bos"] == bos and "bos" not in request.settings(model)
