"""Exact scale folding in every family: any positive scales folded leave the float model's logits unchanged."""

from __future__ import annotations

import copy

import pytest
import torch

from core.architectures import FAMILIES, family_of
from core.layers import decoder_blocks
from core.quantize import QuantizeSpec, quantize_
from core.quantize.fold import block_groups, fold_, share_over_heads, unsupported_reason
from core.quantize.smooth import smooth_
from tests.helpers import MATRIX_FAMILIES, family_tokenizer, tiny_causal_lm

# Linears whose input no exact producer can divide (they read GELU(x)); they are left out of every fold
UNFOLDED = {"gpt2": {"mlp.c_proj"}, "gpt_neox": {"mlp.dense_4h_to_h"}, "falcon": {"mlp.dense_4h_to_h"},
            "opt": set()}


def _model(family: str, **overrides) -> torch.nn.Module:
    model = tiny_causal_lm(family, family_tokenizer(family), **overrides).double()
    with torch.no_grad():  # norms and biases away from their init (1, 0), or a wrong fold could pass unseen
        for name, param in model.named_parameters():
            if param.dim() == 1 and "embed" not in name:
                param.add_(0.3 * torch.randn_like(param))
    return model


def _ids(n: int = 2, seqlen: int = 24) -> torch.Tensor:
    return torch.randint(3, 300, (n, seqlen), generator=torch.Generator().manual_seed(0))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _fold_random_scales_(model: torch.nn.Module) -> int:
    generator, folded = torch.Generator().manual_seed(1), 0
    for block in decoder_blocks(model)[1]:
        for group in block_groups(block, family_of(model)):
            s = torch.exp(torch.randn(group.columns, generator=generator, dtype=torch.float64))
            if group.heads is not None:
                s = share_over_heads(s, group.heads)
            with torch.no_grad():
                fold_(group, s)
            folded += len(group.readers)
    return folded


def _readers(model) -> set[str]:
    """Block-relative names of the linears some fold group of block 0 multiplies."""
    block = decoder_blocks(model)[1][0]
    names = {id(module): name for name, module in block.named_modules()}
    return {names[id(reader)] for group in block_groups(block, family_of(model)) for reader in group.readers}


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_folding_any_scales_leaves_the_logits_unchanged(family):
    model = _model(family)
    assert unsupported_reason(model) is None
    ids = _ids()
    before = _logits(model, ids)
    assert _fold_random_scales_(model) > 0
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_every_linear_with_an_exact_producer_is_folded(family):
    model = _model(family)
    block = decoder_blocks(model)[1][0]
    linears = {name for name, module in block.named_modules() if isinstance(module, torch.nn.Linear)
               or type(module).__name__ == "Conv1D"}
    assert _readers(model) == linears - UNFOLDED.get(family, set())


def test_gemma_folds_into_1_plus_w_and_the_mlp_reads_the_pre_feedforward_norm():
    for family in ("gemma2", "gemma3"):
        model = _model(family)
        groups = block_groups(decoder_blocks(model)[1][0], family_of(model))
        norm_groups = {group.producer: group for group in groups if group.kind == "norm"}
        layer = decoder_blocks(model)[1][0]
        assert norm_groups[layer.pre_feedforward_layernorm].readers == (layer.mlp.gate_proj, layer.mlp.up_proj)
        assert layer.post_attention_layernorm not in norm_groups
        weight = layer.input_layernorm.weight.detach().clone()
        s = torch.full((weight.numel(),), 2.0, dtype=torch.float64)
        with torch.no_grad():
            fold_(norm_groups[layer.input_layernorm], s)
        torch.testing.assert_close(1 + layer.input_layernorm.weight, (1 + weight) / 2)


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_smoothquant_leaves_the_float_logits_unchanged(family):
    model = _model(family)
    ids = _ids()
    before = _logits(model, ids)
    report = smooth_(model, ids, alpha=0.5)
    assert report.layers == len(_readers(model)) * len(decoder_blocks(model)[1])
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-6, rtol=1e-5)


def test_variants_fold_exactly_or_are_refused():
    ids = _ids()
    variants = [("falcon", {"new_decoder_architecture": True, "num_kv_heads": 2}),
                ("falcon", {"parallel_attn": False, "multi_query": False}),
                ("opt", {"activation_function": "gelu"}), ("opt", {"do_layer_norm_before": False})]
    for family, overrides in variants:
        model = _model(family, **overrides)
        reason = unsupported_reason(model)
        if reason is not None:
            assert "do_layer_norm_before" in reason
            continue
        before = _logits(model, ids)
        _fold_random_scales_(model)
        torch.testing.assert_close(_logits(model, ids), before, atol=1e-6, rtol=1e-5)


def test_int8_with_smoothing_on_gemma3_is_no_worse_than_without():
    """Dynamic int8 on Gemma-3: smoothing folded into its norms costs nothing (a wrong fold blows the error up)."""
    model = tiny_causal_lm("gemma3", family_tokenizer("gemma3"))
    ids = _ids(4)
    reference = _logits(model, ids)
    errors = {}
    for alpha in (0.0, 0.5):
        quantized = copy.deepcopy(model)
        quantize_(quantized, QuantizeSpec(method="int8_dynamic", smooth=alpha), ids)
        errors[alpha] = float((_logits(quantized, ids) - reference).norm() / reference.norm())
    assert errors[0.0] < 0.1 and errors[0.5] < 1.25 * errors[0.0]


def test_every_family_of_the_table_is_in_the_matrix():
    assert set(FAMILIES) == set(MATRIX_FAMILIES)
