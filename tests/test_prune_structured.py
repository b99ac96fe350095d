"""Structured pruning: the score math on hand-made tensors, and real shrinking of tiny models.

Every pruned model must save and reload through ``AutoModelForCausalLM`` to identical logits and
generate with the KV cache exactly as without it; removing units that are exactly zero must leave
the outputs unchanged, which checks that the surgery cuts the right rows and columns.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

from core.errors import CancelledError, SpecError
from core.prune.structured import (
    StructuredReport,
    StructuredSpec,
    channel_scores,
    evenly_spaced_middle,
    group_activation_scores,
    group_scores,
    lowest_indices,
    params_removed,
    prune_structured,
    prune_structured_,
    removal_count,
    residual_scores,
)
from tests.helpers import CAUSAL_FAMILIES, HIDDEN

# Per family: where the blocks live, the MLP projections (input side, output side), the config key
# that holds the MLP width, and that width in the tiny models (GPT-2's n_inner=None means 4 * n_embd).
BLOCKS = {"gpt2": "transformer.h", "opt": "model.decoder.layers", "gpt_neox": "gpt_neox.layers",
          "llama": "model.layers"}
MLP = {"gpt2": (("mlp.c_fc",), "mlp.c_proj"), "opt": (("fc1",), "fc2"),
       "gpt_neox": (("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
       "llama": (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")}
WIDTH_KEY = {"gpt2": "n_inner", "opt": "ffn_dim", "gpt_neox": "intermediate_size", "llama": "intermediate_size"}
WIDTH = {"gpt2": 4 * HIDDEN, "opt": 2 * HIDDEN, "gpt_neox": 2 * HIDDEN, "llama": 2 * HIDDEN}
# Parameters one removed MLP channel takes per block: its input rows (+ biases) and output column.
CHANNEL_PARAMS = {"gpt2": 2 * HIDDEN + 1, "opt": 2 * HIDDEN + 1, "gpt_neox": 2 * HIDDEN + 1, "llama": 3 * HIDDEN}


def _ids(vocab: int, rows: int = 2, seqlen: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, vocab, (rows, seqlen), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _blocks(model, family: str):
    return model.get_submodule(BLOCKS[family])


def _load(tiny_models, family: str):
    return AutoModelForCausalLM.from_pretrained(tiny_models[family]).eval()


def _deeper(tiny_models, family: str, layers: int = 4):
    """The tiny ``family`` model with ``layers`` blocks (random, torch seed 1)."""
    config = AutoConfig.from_pretrained(tiny_models[family])
    config.num_hidden_layers = layers
    torch.manual_seed(1)
    return AutoModelForCausalLM.from_config(config).eval()


def _assert_reloads(model, path, ids: torch.Tensor):
    model.save_pretrained(path)
    reloaded = AutoModelForCausalLM.from_pretrained(path).eval()
    assert _params(reloaded) == _params(model)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), rtol=0, atol=0)
    return reloaded


def _assert_cache_consistent(model, ids: torch.Tensor) -> None:
    """Greedy generation with the KV cache equals it without, and step logits match a full pass."""
    prompt = ids[:1, :6]
    kwargs = {"attention_mask": torch.ones_like(prompt), "do_sample": False, "max_new_tokens": 6, "min_new_tokens": 6}
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kwargs)
        uncached = model.generate(prompt, use_cache=False, **kwargs)
        assert torch.equal(cached, uncached)
        out = model(input_ids=ids[:1, :8], use_cache=True)
        # the cache keyword transformers names now (``past_key_values`` goes in 5.40); older families keep theirs
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        step = model(input_ids=ids[:1, 8:10], use_cache=True, **{name: cache})
    torch.testing.assert_close(step.logits, _logits(model, ids[:1, :10])[:, 8:10], rtol=1e-5, atol=1e-5)


# ---- spec ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"target": "neurons", "fraction": 0.5}, "mlp_channels, heads, layers"),
    ({"target": "heads", "fraction": 0.5, "importance": "taylor"}, "weight_norm, activation_norm"),
    ({"target": "heads", "fraction": 0.0}, "strictly between 0 and 1"),
    ({"target": "heads", "fraction": 1.0}, "strictly between 0 and 1"),
    ({"target": "heads", "fraction": True}, "strictly between 0 and 1"),
    ({"target": "heads", "fraction": "0.5"}, "strictly between 0 and 1"),
    ({"target": "mlp_channels"}, "needs a fraction"),
    ({"target": "heads", "layers": (1,)}, "only goes with target 'layers'"),
    ({"target": "layers", "fraction": 0.5, "layers": (1,)}, "not both"),
    ({"target": "layers", "layers": (-1,)}, "whole numbers from 0"),
    ({"target": "layers", "layers": ()}, "non-empty"),
    ({"target": "layers", "layers": (1, 1)}, "twice"),
])
def test_spec_refuses_bad_values_saying_what_is_allowed(kwargs, words):
    with pytest.raises(SpecError, match=words.replace("(", r"\(")):
        StructuredSpec(**kwargs)


def test_spec_from_recipe_form_round_trips_and_sorts_layers():
    spec = StructuredSpec.from_dict({"method": "structured", "target": "layers", "layers": [3, 1]})
    assert spec.layers == (1, 3) and spec.fraction is None
    assert StructuredSpec.from_dict(spec.to_dict()) == spec
    heads = StructuredSpec.from_dict({"target": "heads", "fraction": 0.25, "importance": "activation_norm"})
    assert heads == StructuredSpec("heads", 0.25, "activation_norm")


@pytest.mark.parametrize(("params", "words"), [
    ({"target": "heads", "fraction": 0.5, "sparsity": 0.5}, "sparsity"),
    ({"method": "wanda", "target": "heads", "fraction": 0.5}, "wanda"),
    ({"fraction": 0.5}, "needs a target"),
])
def test_spec_from_dict_refuses_unknown_keys_by_name(params, words):
    with pytest.raises(SpecError, match=words):
        StructuredSpec.from_dict(params)


# ---- math ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fraction", "total", "expected"), [
    (0.25, 64, 16), (0.5, 64, 32), (0.3, 10, 3), (0.25, 2, 1), (0.01, 64, 1), (0.99, 4, 3),
])
def test_removal_count_rounds_half_up_and_keeps_one(fraction, total, expected):
    assert removal_count(fraction, total) == expected


def test_lowest_indices_are_ascending_and_ties_go_to_the_lower_index():
    assert lowest_indices(torch.tensor([3.0, 1.0, 2.0, 1.0, 0.5]), 3).tolist() == [1, 3, 4]


def test_channel_scores_multiply_input_row_norms_by_output_column_norms():
    gate = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])  # [channels=3, hidden=2]
    up = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    down = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])  # [hidden=2, channels=3]
    assert channel_scores([gate, up], down).tolist() == [5.0, 2.0, 0.0]


def test_group_scores_multiply_value_rows_by_output_columns_per_kv_group():
    values = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # 2 KV groups, head_dim 1, hidden 2
    output = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])  # 4 query heads: 2 per group
    assert group_scores(values, output, groups=2).tolist() == [5.0, 2.0]
    assert group_activation_scores(torch.tensor([3.0, 4.0, 5.0, 12.0]), groups=2).tolist() == [5.0, 13.0]


def test_residual_scores_and_evenly_spaced_middle_blocks():
    assert residual_scores(torch.tensor([4.0, 0.0]), torch.tensor([16.0, 9.0])).tolist() == [0.5, 0.0]
    assert evenly_spaced_middle(4, 2) == (1, 2)
    assert evenly_spaced_middle(8, 3) == (2, 4, 6)
    assert evenly_spaced_middle(10, 1) == (5,)
    with pytest.raises(SpecError, match="first or the"):
        evenly_spaced_middle(4, 3)


# ---- MLP channels ----------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.25, 0.5])
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_mlp_channels_shrink_every_block_and_reload_identically(tiny_models, tmp_path, family, fraction):
    model = _load(tiny_models, family)
    before, removed = _params(model), int(WIDTH[family] * fraction)
    report = prune_structured_(model, StructuredSpec("mlp_channels", fraction))
    assert getattr(model.config, WIDTH_KEY[family]) == WIDTH[family] - removed
    assert report.config_changes == {WIDTH_KEY[family]: WIDTH[family] - removed}
    assert report.params_before == before
    assert report.params_after == _params(model) == before - 2 * removed * CHANNEL_PARAMS[family]
    assert [len(r) for r in report.removed.values()] == [removed, removed]
    ids = _ids(model.config.vocab_size)
    _assert_reloads(model, tmp_path, ids)
    _assert_cache_consistent(model, ids)


def _zero_channels_(model, family: str, channels: torch.Tensor) -> None:
    """Zero the input rows (and biases) and output columns of ``channels`` in every block's MLP."""
    inputs, output = MLP[family]
    with torch.no_grad():
        for block in _blocks(model, family):
            for name in inputs:
                module = block.get_submodule(name)
                module.weight.index_fill_(1 if family == "gpt2" else 0, channels, 0.0)  # Conv1D: [in, out]
                if module.bias is not None:
                    module.bias[channels] = 0.0
            module = block.get_submodule(output)
            module.weight.index_fill_(0 if family == "gpt2" else 1, channels, 0.0)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_removing_exactly_zero_channels_leaves_outputs_unchanged(tiny_models, family):
    model = _load(tiny_models, family)
    count = removal_count(0.25, WIDTH[family])
    zeros = torch.randperm(WIDTH[family], generator=torch.Generator().manual_seed(3))[:count].sort().values
    _zero_channels_(model, family, zeros)
    ids = _ids(model.config.vocab_size)
    expected = _logits(model, ids)
    report = prune_structured_(model, StructuredSpec("mlp_channels", 0.25))
    assert report.removed == {0: tuple(zeros.tolist()), 1: tuple(zeros.tolist())}
    torch.testing.assert_close(_logits(model, ids), expected, rtol=1e-5, atol=1e-6)


def test_activation_norm_removes_channels_that_never_fire(tiny_models):
    """Zero up_proj rows make silu(gate) * up exactly 0, though gate and down stay non-zero."""
    model = _load(tiny_models, "llama")
    silent = torch.arange(0, 64, 4)  # 16 channels = 25%
    with torch.no_grad():
        for block in model.model.layers:
            block.mlp.up_proj.weight[silent] = 0.0
    ids = _ids(model.config.vocab_size, rows=3)
    expected = _logits(model, ids)
    stages = []
    report = prune_structured_(model, StructuredSpec("mlp_channels", 0.25, "activation_norm"), calibration=ids,
                               on_progress=lambda stage, done: stages.append((stage, done)))
    assert report.removed == {0: tuple(silent.tolist()), 1: tuple(silent.tolist())}
    assert ("calibrate", 1.0) in stages and ("prune", 1.0) in stages
    torch.testing.assert_close(_logits(model, ids), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["mlp_channels", "heads", "layers"])
def test_activation_norm_without_calibration_is_refused(tiny_models, target):
    with pytest.raises(SpecError, match="needs calibration"):
        prune_structured_(_load(tiny_models, "llama"), StructuredSpec(target, 0.5, "activation_norm"))


def test_calibration_must_be_token_ids(tiny_models):
    with pytest.raises(SpecError, match="integer tensor"):
        prune_structured_(_load(tiny_models, "llama"), StructuredSpec("heads", 0.5, "activation_norm"),
                          calibration=torch.rand(2, 8))


def test_cancel_during_calibration_leaves_the_model_unchanged(tiny_models):
    model = _load(tiny_models, "llama")
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CancelledError):
        prune_structured_(model, StructuredSpec("mlp_channels", 0.5, "activation_norm"),
                          calibration=_ids(model.config.vocab_size), cancel=lambda: True)
    assert model.config.intermediate_size == 64
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


# ---- heads -----------------------------------------------------------------------------------


def test_heads_remove_whole_kv_groups_and_reload_identically(tiny_models, tmp_path):
    model = _load(tiny_models, "llama")  # 4 query heads over 2 KV heads, head_dim 8
    before = _params(model)
    report = prune_structured_(model, StructuredSpec("heads", 0.5))
    config = model.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 1, 8)
    # per block: q rows 2*8 and k, v rows 8 (hidden 32 wide), o_proj columns 2*8
    assert before - _params(model) == report.params_before - report.params_after == 2 * (16 + 8 + 8 + 16) * HIDDEN
    assert all(len(groups) == 1 for groups in report.removed.values())
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
    ids = _ids(config.vocab_size)
    _assert_reloads(model, tmp_path, ids)
    _assert_cache_consistent(model, ids)


@pytest.mark.parametrize("importance", ["weight_norm", "activation_norm"])
def test_removing_a_kv_group_with_zero_values_leaves_outputs_unchanged(tiny_models, importance):
    model = _load(tiny_models, "llama")
    with torch.no_grad():
        for block in model.model.layers:
            block.self_attn.v_proj.weight[8:16] = 0.0  # KV group 1 (head_dim 8) adds nothing
    ids = _ids(model.config.vocab_size)
    expected = _logits(model, ids)
    report = prune_structured_(model, StructuredSpec("heads", 0.5, importance), calibration=ids)
    assert report.removed == {0: (1,), 1: (1,)}
    torch.testing.assert_close(_logits(model, ids), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "opt", "gpt_neox"])
def test_heads_on_fused_head_families_name_the_possible_targets(tiny_models, family):
    with pytest.raises(SpecError, match="possible targets for this model: mlp_channels, layers"):
        prune_structured_(_load(tiny_models, family), StructuredSpec("heads", 0.5))


def test_head_counts_the_config_refuses_are_refused_with_the_counts_that_work():
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(SpecError, match=r"leaves 3 heads.*accepts: 2 \(fraction 0.50\)"):
        prune_structured_(model, StructuredSpec("heads", 0.25))  # 32 is not a multiple of 3
    assert model.config.num_attention_heads == 4 and model.model.layers[0].self_attn.q_proj.out_features == 32


def test_non_mutating_variant_leaves_the_original_untouched(tiny_models):
    model = _load(tiny_models, "llama")
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune_structured(model, StructuredSpec("heads", 0.5))
    assert isinstance(report, StructuredReport) and pruned is not model
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert pruned.config.num_attention_heads == 2 and _params(pruned) < _params(model)
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


# ---- layers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_half_of_the_layers_go_from_the_middle_and_reload_identically(tiny_models, tmp_path, family):
    model = _deeper(tiny_models, family)
    before, block_params = _params(model), _params(_blocks(model, family)[0])
    report = prune_structured_(model, StructuredSpec("layers", 0.5))
    assert report.removed_layers == (1, 2) and model.config.num_hidden_layers == 2
    assert report.params_after == _params(model) == before - 2 * block_params
    ids = _ids(model.config.vocab_size)
    _assert_reloads(model, tmp_path, ids)
    _assert_cache_consistent(model, ids)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_explicit_layers_are_dropped_and_the_rest_renumbered(tiny_models, tmp_path, family):
    model = _deeper(tiny_models, family)
    kept = [_blocks(model, family)[i] for i in (1, 3)]
    report = prune_structured_(model, StructuredSpec("layers", layers=(0, 2)))
    assert report.removed_layers == (0, 2) and model.config.num_hidden_layers == 2
    assert list(_blocks(model, family)) == kept
    indices = [[m.layer_idx for m in b.modules() if isinstance(getattr(m, "layer_idx", None), int)] for b in kept]
    assert all(ix and set(ix) == {i} for i, ix in enumerate(indices))
    ids = _ids(model.config.vocab_size)
    _assert_reloads(model, tmp_path, ids)
    _assert_cache_consistent(model, ids)


def test_calibration_ranks_layers_and_an_identity_block_goes_first(tiny_models):
    model = _deeper(tiny_models, "llama")
    with torch.no_grad():  # block 1 adds nothing to the residual stream: it is the identity
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    ids = _ids(model.config.vocab_size)
    expected = _logits(model, ids)
    report = prune_structured_(model, StructuredSpec("layers", 0.25), calibration=ids)
    assert report.removed_layers == (1,)  # without calibration the middle pick would be block 2
    torch.testing.assert_close(_logits(model, ids), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("spec", "words"), [
    (StructuredSpec("layers", 0.5), "layers=\\[...\\]"),
    (StructuredSpec("layers", layers=(2,)), "past the last one"),
    (StructuredSpec("layers", layers=(0, 1)), "all 2 blocks"),
])
def test_layer_choices_that_cannot_work_are_refused(tiny_models, spec, words):
    model = _load(tiny_models, "gpt2")
    with pytest.raises(SpecError, match=words):
        prune_structured_(model, spec)
    assert len(model.transformer.h) == 2


def _tiny_qwen2():
    """Qwen2 with q/k/v biases, 4 blocks of which the last two use sliding-window attention."""
    config = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         use_sliding_window=True, sliding_window=4, max_window_layers=2,
                         bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_qwen2_layer_types_follow_the_kept_layers(tmp_path):
    model = _tiny_qwen2()
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    report = prune_structured_(model, StructuredSpec("layers", layers=(1,)))
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert report.config_changes["layer_types"] == model.config.layer_types
    ids = _ids(300)
    _assert_reloads(model, tmp_path, ids)
    _assert_cache_consistent(model, ids)


def test_qwen2_heads_slice_the_biases_too(tmp_path):
    model = _tiny_qwen2()
    prune_structured_(model, StructuredSpec("heads", 0.5))
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.bias.shape == (16,) and attn.k_proj.bias.shape == (8,)
    ids = _ids(300)
    _assert_reloads(model, tmp_path, ids)
    _assert_cache_consistent(model, ids)


# ---- size preview ----------------------------------------------------------------------------

_PREVIEW_SPECS = [StructuredSpec("mlp_channels", 0.25), StructuredSpec("mlp_channels", 0.6),
                  StructuredSpec("layers", 0.5), StructuredSpec("layers", layers=(0, 2))]


@pytest.mark.parametrize("spec", _PREVIEW_SPECS, ids=lambda s: f"{s.target}-{s.fraction or s.layers}")
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_params_removed_predicts_the_real_run_from_shapes(tiny_models, family, spec):
    model = _deeper(tiny_models, family)
    predicted = params_removed(model, spec)
    report = prune_structured_(model, spec)
    assert predicted == report.params_before - report.params_after > 0


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_params_removed_predicts_head_removal_with_biases(fraction):
    model = _tiny_qwen2()  # grouped-query attention with q/k/v biases
    predicted = params_removed(model, StructuredSpec("heads", fraction))
    report = prune_structured_(model, StructuredSpec("heads", fraction))
    assert predicted == report.params_before - report.params_after > 0


def test_params_removed_refuses_what_the_run_refuses(tiny_models):
    with pytest.raises(SpecError, match="possible targets"):
        params_removed(_load(tiny_models, "gpt2"), StructuredSpec("heads", 0.5))
    with pytest.raises(SpecError, match="past the last one"):
        params_removed(_load(tiny_models, "llama"), StructuredSpec("layers", layers=(7,)))


def test_structured_labels_tell_the_ranking_and_the_exact_share_apart():
    assert StructuredSpec("mlp_channels", 0.25).label == "structured mlp_channels 25%"
    assert StructuredSpec("heads", 0.25, "activation_norm").label == "structured heads 25% by activation_norm"
    assert StructuredSpec("mlp_channels", 0.255).label != StructuredSpec("mlp_channels", 0.25).label
    assert StructuredSpec("layers", layers=[1, 3]).label == "structured layers [1, 3]"


def test_a_structured_steps_report_label_keeps_the_ranking_beside_what_was_removed(tiny):
    import copy

    from core.prune.step import PruneStep
    from core.technique import StepContext

    labels = {}
    for importance in ("weight_norm", "activation_norm"):
        step = PruneStep.from_dict({"method": "structured", "target": "mlp_channels", "fraction": 0.25,
                                    "importance": importance})
        context = StepContext(tokenizer=None, default_text="sample")
        context.__dict__["calibration"] = torch.randint(0, 256, (4, 16))  # cached_property: calibration ids given
        labels[importance] = step.apply(copy.deepcopy(tiny["llama"]), context)["label"]
    assert labels["weight_norm"].startswith("structured mlp_channels 25% (-") and "params)" in labels["weight_norm"]
    assert "by activation_norm" in labels["activation_norm"] and labels["weight_norm"] != labels["activation_norm"]
