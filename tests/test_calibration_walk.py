"""The calibration walk gives every block what a full forward pass gives it, in every family."""

from __future__ import annotations

import pytest
import torch

from core.calibration.tail import logits_from_block
from core.calibration.walk import capture_block_inputs, collect_statistics
from core.layers import decoder_blocks
from tests.helpers import MATRIX_FAMILIES, family_tokenizer, tiny_causal_lm

SEQLEN = 40  # longer than the tiny Gemma configs' sliding window (16): sliding and full masks differ


def _samples(tokenizer, n: int = 2) -> torch.Tensor:
    return torch.randint(3, len(tokenizer), (n, SEQLEN), generator=torch.Generator().manual_seed(1))


def _walked_inputs(model, ids: torch.Tensor) -> list[list[torch.Tensor]]:
    """Per sample, the hidden states each block receives when the walk replays the blocks one by one, and
    last the output of the last block."""
    _, blocks = decoder_blocks(model)
    inputs, walked = capture_block_inputs(model, ids), []
    for block in blocks:
        walked.append([item.hidden for item in inputs])
        inputs = [item.advance(block) for item in inputs]
    walked.append([item.hidden for item in inputs])
    return [[per_block[s] for per_block in walked] for s in range(len(ids))]


def _forward_inputs(model, sample: torch.Tensor) -> list[torch.Tensor]:
    """The hidden states each block receives in one full forward pass (its pre-hooks record them), and last
    the output of the last block."""
    _, blocks = decoder_blocks(model)
    seen: list[torch.Tensor] = []
    handles = [block.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()),
        with_kwargs=True) for block in blocks]
    handles.append(blocks[-1].register_forward_hook(
        lambda _m, _args, out: seen.append((out[0] if isinstance(out, tuple) else out).detach())))
    try:
        with torch.no_grad():
            model(input_ids=sample.unsqueeze(0), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_gemma3_blocks_get_their_own_masks_and_rope_bases():
    tokenizer = family_tokenizer("gemma3")
    # full attention in the middle (Gemma-3 has one every sixth block): what follows it depends on its mask
    layer_types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    model = tiny_causal_lm("gemma3", tokenizer, num_hidden_layers=4, layer_types=layer_types)
    ids = _samples(tokenizer)
    captured = capture_block_inputs(model, ids)
    first, full = captured[0].calls[0][1], captured[0].calls[1][1]
    # the full-attention block gets other position embeddings (global RoPE base) and another mask
    assert not torch.allclose(first["position_embeddings"][0], full["position_embeddings"][0])
    assert first["attention_mask"] is not None and full["attention_mask"] is None  # full: sdpa's causal flag
    for sample, walked in zip(ids, _walked_inputs(model, ids), strict=True):
        for index, (got, want) in enumerate(zip(walked, _forward_inputs(model, sample), strict=True)):
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), f"block {index}"


@pytest.mark.parametrize("family", MATRIX_FAMILIES)
def test_every_family_walks_with_a_full_forwards_block_inputs(family):
    tokenizer = family_tokenizer(family)
    model = tiny_causal_lm(family, tokenizer, **{"n_layer" if family == "gpt2" else "num_hidden_layers": 5})
    ids = _samples(tokenizer, 1)
    walked = _walked_inputs(model, ids)[0]
    want = _forward_inputs(model, ids[0])
    assert len(walked) == len(want) == 6
    for index, (got, expected) in enumerate(zip(walked, want, strict=True)):
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), f"{family} block {index}"
    with torch.no_grad():  # the tail from the last block, its predecessors skipped, gives the model's logits
        full = model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(logits_from_block(model, 4, want[4], ids), full, atol=1e-4)
    assert torch.allclose(logits_from_block(model, 2, want[2], ids), full, atol=1e-4)


def test_statistics_of_a_later_block_use_that_blocks_mask():
    """Wanda/GPTQ statistics of Gemma-3's full-attention block equal those gathered in a full forward pass."""
    tokenizer = family_tokenizer("gemma3")
    model = tiny_causal_lm("gemma3", tokenizer)
    ids = _samples(tokenizer, 1)
    _, blocks = decoder_blocks(model)
    inputs = capture_block_inputs(model, ids)
    for block in blocks[:-1]:
        inputs = [item.advance(block) for item in inputs]
    o_proj = blocks[-1].self_attn.o_proj
    stats = collect_statistics(blocks[-1], [("o", o_proj)], inputs)["o"]
    seen: list[torch.Tensor] = []
    handle = o_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    x = seen[0].reshape(-1, seen[0].shape[-1])
    assert stats.tokens == SEQLEN
    assert torch.allclose(stats.act_norm, x.norm(dim=0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(stats.hessian, 2 * x.t() @ x / SEQLEN, rtol=1e-4, atol=1e-5)
