"""The decode loops that time generation: every step's logits equal the model's forward, per family, or it is
not used."""

import copy

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from core.architectures import LLAMA_DECODE
from core.evaluate import decode, measure_latency
from core.evaluate.decode import choice, hand
from core.quantize import QuantizeSpec, quantize_
from tests.helpers import tiny_causal_lm

VOCAB = 300


def _tiny(config_name: str, **extra) -> torch.nn.Module:
    sizes = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    if config_name != "FalconConfig":
        sizes.update(intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64)
    config = getattr(transformers, config_name)(**sizes, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


# Every family the loader's tests build, and the ones the issue names (tiny configs; sliding windows
# narrower than the sequences below, so the windows matter)
FAMILIES = {
    "llama": lambda: tiny_causal_lm("llama"),
    "gpt2": lambda: tiny_causal_lm("gpt2"),
    "opt": lambda: tiny_causal_lm("opt"),
    "gpt_neox": lambda: tiny_causal_lm("gpt_neox"),
    "mistral": lambda: _tiny("MistralConfig"),  # a 4096-position window: wider than any sequence here
    "mistral-window": lambda: _tiny("MistralConfig", sliding_window=4),
    "qwen2": lambda: _tiny("Qwen2Config", use_sliding_window=False),
    "qwen3": lambda: _tiny("Qwen3Config", head_dim=8, use_sliding_window=False),
    "gemma3": lambda: _tiny("Gemma3TextConfig", head_dim=8, sliding_window=4,
                            layer_types=["sliding_attention", "full_attention"]),
    "gemma2": lambda: _tiny("Gemma2Config", head_dim=8, sliding_window=4),
    "phi3": lambda: _tiny("Phi3Config", pad_token_id=0, eos_token_id=1, bos_token_id=1),
    "falcon": lambda: _tiny("FalconConfig"),
}
HAND_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}


def _ids(length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed))


def _reference_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits[0]


def _decoder_logits(decoder, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of positions prefill-1 .. end, the prompt first and then one token per call."""
    decoder.reset()
    rows = [decoder.forward(ids[:, :prefill])[0]]
    rows += [decoder.forward(ids[:, i:i + 1])[0] for i in range(prefill, ids.shape[1])]
    return torch.stack(rows)


def _assert_exact(model, step: str, atol: float = 1e-4, ids: torch.Tensor | None = None, **settings) -> None:
    ids = _ids() if ids is None else ids
    decoder = decode.build(model, ids.shape[1] + 2, step, decode.CompileSettings(**settings))
    got = _decoder_logits(decoder, ids, prefill=5)
    assert decoder.failure is None
    torch.testing.assert_close(got, _reference_logits(model, ids)[4:], atol=atol, rtol=atol)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_decodes_exactly_through_the_static_cache(family):
    model = FAMILIES[family]()
    steps = decode.plan_steps(model, compile=False, max_len=14).steps
    assert steps[-1] == "eager" and "dynamic" not in steps  # every family here has a static-cache path
    assert ("hand" in steps) == (family in HAND_FAMILIES)
    for step in (*steps, "dynamic"):
        _assert_exact(model, step)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_decodes_exactly_compiled(family):
    model = FAMILIES[family]()
    _assert_exact(model, "compiled")
    if family in HAND_FAMILIES:
        _assert_exact(model, "hand-compiled")


def test_the_hand_step_refuses_what_it_cannot_run_exactly():
    layout = LLAMA_DECODE
    assert hand.unsupported_reason(FAMILIES["gpt2"](), layout) is not None
    windowed = FAMILIES["mistral-window"]()
    assert "sliding-window" in hand.unsupported_reason(windowed, layout, max_len=8)
    assert hand.unsupported_reason(FAMILIES["mistral"](), layout, max_len=64) is None
    with pytest.raises(ValueError, match="cannot run this model"):
        decode.build(windowed, 8, "hand")
    plan = decode.plan_steps(FAMILIES["gemma3"](), compile=False)
    assert plan.steps == ("eager",) and any("gemma3_text" in note for note in plan.notes)


def test_decoders_check_their_cache_and_call_order():
    decoder = decode.build(tiny_causal_lm("llama"), 6, "hand")
    decoder.forward(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="only as the first call"):
        decoder.forward(torch.tensor([[4, 5]]))
    for token in (4, 5, 6):
        decoder.forward(torch.tensor([[token]]))
    with pytest.raises(ValueError, match="exceed the cache"):
        decoder.forward(torch.tensor([[7]]))


def test_the_hand_step_runs_quantized_layers_and_a_tied_quantized_head():
    model = tiny_causal_lm("llama")
    quantize_(model, QuantizeSpec(method="int8_dynamic", lm_head=True))
    assert decode.kernel_kind(model) == "int8_dynamic"
    assert decode.plan_steps(model, compile=False).steps[0] == "hand"  # fbgemm: the hand step stacks its calls
    assert decode.tolerance(model) == choice.LOW_PRECISION_TOLERANCE
    # the same int8 kernels run in both; a token's activation range is its own either way, but fbgemm
    # rounds a lone token a hair differently from the same token scaled within a batch
    _assert_exact(model, "hand", atol=2e-2)


@pytest.mark.parametrize("kernel,spec", [
    ("int8_weight_only", {"method": "rtn", "bits": 8}),
    ("int4_weight_only", {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False}),
])
def test_weight_only_kernels_decode_exactly(kernel, spec):
    model = tiny_causal_lm("llama")
    quantize_(model, QuantizeSpec(**spec, kernel=kernel, lm_head=True))
    assert decode.kernel_kind(model) == kernel
    assert decode.tolerance(model) == choice.LOW_PRECISION_TOLERANCE  # the kernels take bf16 activations
    for step in ("hand", "eager"):
        _assert_exact(model, step, atol=2e-3)  # the same bf16 kernels in both: only the summation order differs


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


def test_the_hand_step_stacks_qkv_and_gate_up_only_where_it_is_exact():
    layout = LLAMA_DECODE
    dense = hand.HandStep(tiny_causal_lm("llama"), layout, 8).layers[0]
    assert dense.qkv is not None and dense.gate_up is not None and dense.query_scale == 1.0
    qwen3 = hand.HandStep(FAMILIES["qwen3"](), layout, 8).layers[0]  # per-head norms: scaling stays outside
    assert qwen3.qkv is not None and qwen3.query_scale != 1.0
    grouped = tiny_causal_lm("llama")
    quantize_(grouped, QuantizeSpec(method="rtn", bits=4, group_size=16, kernel="dequant"))
    unstacked = hand.HandStep(grouped, layout, 8).layers[0]
    assert unstacked.qkv is None and unstacked.gate_up is None and unstacked.query_scale != 1.0
    _assert_exact(grouped, "hand")


# ---- choosing, checking and keeping a decoder ----


@pytest.mark.parametrize("family,step", [("llama", "hand"), ("gpt2", "eager")])
def test_latency_names_the_loop_that_ran_and_how_exact_it_was(family, step):
    metrics = measure_latency(tiny_causal_lm(family), torch.arange(10, 18), new_tokens=3, warmup=1, runs=2)
    assert metrics.step == step and "prefill: transformers forward" in metrics.loop
    assert metrics.exactness["max_logit_diff"] <= metrics.exactness["tolerance"] == 1e-3
    assert metrics.compile_s is None and not metrics.compiled_now
    assert any("compile off" in note for note in metrics.loop_notes)  # a tiny model: not worth compiling
    assert metrics.decode_tok_s > 0


def test_an_inexact_step_is_not_used_and_the_note_says_why(monkeypatch):
    model = tiny_causal_lm("llama")
    honest = hand.HandStep.__call__
    monkeypatch.setattr(hand.HandStep, "__call__", lambda self, token, position: honest(self, token, position) + 1.0)
    with choice.open_decoder(model, _ids(), 16, compile=False) as chosen:
        assert chosen.step == "eager"
        assert any(note.startswith("hand: logits differ") for note in chosen.notes)


def test_a_step_that_cannot_compile_runs_eager_and_says_why():
    def data_dependent(x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # a branch on a tensor's value: no single graph (fullgraph=True refuses it)
            return x + 1
        return x - 1

    step = decode.CompiledStep(data_dependent)
    x = torch.ones(3)
    assert torch.equal(step(x), x + 1) and torch.equal(step(-x), -x - 1)
    assert step.failure is not None and "torch.compile failed" in step.failure and not step.compiled


def test_a_decoder_is_built_once_per_model_and_rebuilt_when_weights_change():
    model = tiny_causal_lm("llama")
    prompt = _ids(6)
    with choice.open_decoder(model, prompt, 10, compile=False) as first:
        pass
    with choice.open_decoder(model, prompt, 10, compile=False) as again:
        assert again.decoder is first.decoder
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(0.5)  # written in place: the stacked copy is stale
    with choice.open_decoder(model, prompt, 10, compile=False) as rebuilt:
        assert rebuilt.decoder is not first.decoder
    copied = copy.deepcopy(model)  # the cache never travels with a copy
    assert copied.__dict__[choice.CACHE_ATTRIBUTE]._entries == {}


def test_a_busy_decoder_is_not_lent_twice():
    model = tiny_causal_lm("llama")
    prompt = _ids(6)
    with choice.open_decoder(model, prompt, 10, compile=False) as outer:
        with choice.open_decoder(model, prompt, 10, compile=False) as inner:
            assert inner.decoder is not outer.decoder
