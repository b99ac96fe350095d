"""The static decode loop that times generation: same logits as the model's forward, or not used."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

from core.evaluate import decode, measure_latency
from core.quantize import QuantizeSpec, quantize_
from tests.helpers import tiny_causal_lm


def _reference_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0]


def _static_logits(model: torch.nn.Module, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    decoder = decode.StaticDecoder(model, ids.shape[1] + 2)
    rows = [decoder.forward(ids[:, :prefill])[0]]
    rows += [decoder.forward(ids[:, i:i + 1])[0] for i in range(prefill, ids.shape[1])]
    return torch.stack(rows)


def _qwen(config_cls, **extra) -> torch.nn.Module:
    config = config_cls(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


MODELS = {
    "llama": lambda: tiny_causal_lm("llama"),
    "qwen2": lambda: _qwen(Qwen2Config, use_sliding_window=False),
    "qwen3": lambda: _qwen(Qwen3Config, head_dim=8, use_sliding_window=False),
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_static_loop_logits_equal_the_forward(family):
    model = MODELS[family]()
    assert decode.unsupported_reason(model) is None
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(1))
    expected = _reference_logits(model, ids)[4:]
    got = _static_logits(model, ids, prefill=5)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_static_loop_runs_quantized_layers_and_a_tied_quantized_head():
    model = tiny_causal_lm("llama")
    quantize_(model, QuantizeSpec(method="int8_dynamic", lm_head=True))
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(2))
    expected = _reference_logits(model, ids)[3:]
    got = _static_logits(model, ids, prefill=4)
    # the same int8 kernels run in both; only the per-token activation range differs for the prefill
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


def test_static_loop_refuses_what_it_cannot_run_exactly():
    gpt2 = tiny_causal_lm("gpt2")
    assert "gpt2" in decode.unsupported_reason(gpt2)
    with pytest.raises(ValueError, match="cannot run this model"):
        decode.StaticDecoder(gpt2, 8)
    sliding = _qwen(Qwen2Config, use_sliding_window=True, sliding_window=8)
    assert decode.unsupported_reason(sliding) == "sliding-window attention"


def test_static_loop_checks_its_cache_and_call_order():
    decoder = decode.StaticDecoder(tiny_causal_lm("llama"), 6)
    decoder.forward(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="only as the first call"):
        decoder.forward(torch.tensor([[4, 5]]))
    decoder.forward(torch.tensor([[4]]))
    decoder.forward(torch.tensor([[5]]))
    decoder.forward(torch.tensor([[6]]))
    with pytest.raises(ValueError, match="exceed the cache"):
        decoder.forward(torch.tensor([[7]]))


@pytest.mark.parametrize("family,loop", [("llama", decode.STATIC_LOOP), ("gpt2", decode.TRANSFORMERS_LOOP)])
def test_latency_names_the_loop_that_ran(family, loop):
    metrics = measure_latency(tiny_causal_lm(family), torch.arange(10, 18), new_tokens=3, warmup=1, runs=2)
    assert metrics.loop == loop
    assert metrics.decode_tok_s > 0


def test_stacked_int8_matmul_equals_the_layers_side_by_side():
    model = tiny_causal_lm("llama")
    quantize_(model, QuantizeSpec(method="int8_dynamic"))
    attn = model.model.layers[0].self_attn
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    stacked = type(attn.q_proj).stacked_matmul(parts, [0.5, 1.0, 1.0])
    x = torch.randn(1, attn.q_proj.in_features, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = torch.cat([parts[0](x) * 0.5, parts[1](x), parts[2](x)], dim=1)
        torch.testing.assert_close(stacked(x), expected, atol=1e-5, rtol=1e-5)


def test_the_loop_stacks_qkv_and_gate_up_only_where_it_is_exact():
    dense = decode.StaticDecoder(tiny_causal_lm("llama"), 8).layers[0]
    assert dense.qkv is not None and dense.gate_up is not None and dense.query_scale == 1.0
    qwen3 = decode.StaticDecoder(MODELS["qwen3"](), 8).layers[0]  # per-head norms: scaling stays outside
    assert qwen3.qkv is not None and qwen3.query_scale != 1.0
    grouped = tiny_causal_lm("llama")
    quantize_(grouped, QuantizeSpec(method="rtn", bits=4, group_size=16, kernel="dequant"))
    unstacked = decode.StaticDecoder(grouped, 8).layers[0]
    assert unstacked.qkv is None and unstacked.gate_up is None and unstacked.query_scale != 1.0


def test_unstacked_layers_give_the_forward_logits_too():
    model = tiny_causal_lm("llama")
    quantize_(model, QuantizeSpec(method="rtn", bits=4, group_size=16, kernel="dequant"))
    ids = torch.randint(0, 300, (1, 10), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(_static_logits(model, ids, prefill=4), _reference_logits(model, ids)[3:],
                               atol=1e-4, rtol=1e-4)
