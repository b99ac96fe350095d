"""Architecture facts in one place: what differs between the causal-LM families SqueezeLab knows.

Techniques consult this table instead of testing ``model_type`` themselves. Per family it says:

* where the decoder blocks are, and how their linears are named (block-relative paths);
* the norm formula: ``rms`` (``x / rms(x) * w``), ``rms+1`` (Gemma: ``x / rms(x) * (1 + w)``) or ``layer``
  (``(x - mean) / std * w + b``); a scale folded into a norm depends on it;
* the embedding scale: Gemma's embedding module multiplies its rows by sqrt(hidden) in its own forward,
  so a module that replaces it must too;
* fused projections: Phi-3's ``qkv_proj`` ([q | k | v] rows) and ``gate_up_proj`` ([gate | up] rows),
  GPT-NeoX's per-head interleaved ``query_key_value``, Falcon's grouped one, GPT-2's ``c_attn``;
* which linears share an input, and what produces it (the ``folds``: SmoothQuant and AWQ divide the
  producer's output by the scales they multiply into the readers' columns);
* the GGUF names llama.cpp uses, and what it assumes (Gemma norms stored with the +1 folded in, q/k rows
  of Llama permuted for its rotary layout), or why a family cannot be written;
* facts a decode loop needs (``decode_layout``: where the hand-written step finds a pre-norm rotary block's
  parts; the residual wiring). Every family whose class supports transformers' static cache also decodes
  through its own forward, compiled, with no entry here.

Nothing here touches weights: names only. What follows from them for a config (heads, the rows of fused
projections, the row order of GGUF tensors) is computed in ``core.architecture_rows``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from core.errors import SpecError

NORM_RMS, NORM_RMS_PLUS_ONE, NORM_LAYER = "rms", "rms+1", "layer"
# qkv layouts: separate q/k/v linears; one matrix [q | k | v]; per head [q_h, k_h, v_h]; per kv group
# [q of its heads, k, v] (Falcon; multi-query is one group)
SEPARATE, STACKED, INTERLEAVED, GROUPED = "separate", "stacked", "interleaved", "grouped"

ConfigTest = Callable[[Any], bool]


@dataclass(frozen=True)
class Fold:
    """Linears ``readers`` that read one input, produced by the module ``producer`` (block-relative names).

    ``kind``: "norm" (the producer is a norm), "rows" (the producer's output rows are the input, unchanged or
    through a positively homogeneous activation such as ReLU), "heads" (the input is the attention output:
    a mix of the value rows of the producer). ``rows`` says which producer rows: "all", "second_half"
    (Phi-3's up half of gate_up_proj) or "values" (the value rows of a fused qkv, by the family's layout).
    ``when`` limits the fold to configs where it is exact (e.g. OPT's ReLU)."""

    kind: str
    producer: str
    readers: tuple[str, ...]
    rows: str = "all"
    when: ConfigTest | None = None


@dataclass(frozen=True)
class Attention:
    """The attention's linears: ``qkv`` (three names, or one fused matrix in ``layout``) and ``output``.

    ``head_dim_key``: the config key that holds the head size apart from the hidden size; None when the
    head size is hidden / heads, so a config cannot describe fewer heads."""

    layout: str
    qkv: tuple[str, ...]
    output: str
    head_dim_key: str | None = "head_dim"


@dataclass(frozen=True)
class Mlp:
    """The MLP's input-side linears, its output-side linear, and the config keys that may hold its width.

    ``fused_halves``: one matrix [gate; up], so channel c is rows c and width + c of it."""

    inputs: tuple[str, ...]
    output: str
    width_keys: tuple[str, ...]
    fused_halves: bool = False


@dataclass(frozen=True)
class Requirement:
    """A config value llama.cpp's architecture assumes: ``key`` is one of ``allowed``, or the file would run another
    model there (``does`` says what llama.cpp does, e.g. "runs SiLU in the MLP")."""

    key: str
    allowed: tuple[Any, ...]
    does: str


@dataclass(frozen=True)
class Gguf:
    """How llama.cpp stores the family: its architecture name, the gguf tensor-name map to use, and what
    it expects of the tensors and metadata (``keys``: extra metadata this family carries).

    ``read_back``: who rebuilds a written file for the export check: ``transformers`` (its GGUF loader) or
    ``squeezelab`` (``core.models.gguf_read``, where transformers' loader cannot rebuild the family faithfully).
    ``requires``: the config values llama.cpp's architecture assumes (a variant with others is refused);
    ``refusal``: the same for what one field cannot say (None: llama.cpp runs the config)."""

    arch: str
    names: str  # a gguf.MODEL_ARCH member
    permute_qk: bool = False  # q/k rows interleaved for llama.cpp's rotary layout (Llama only)
    norm_shift: float = 0.0  # added to every norm weight (Gemma: llama.cpp multiplies by w, not 1 + w)
    keys: tuple[str, ...] = ()  # key_length | sliding_window | softcapping | rope_dimensions | parallel_residual
    # | rope_swa (the sliding-window blocks' RoPE base)
    eps_key: str = "rms_norm_eps"  # the config field of the norms' epsilon
    rope: bool = True  # rotary positions (GPT-2 adds learned absolute position embeddings instead)
    stack_qkv: bool = False  # a fused per-head / per-group qkv is stored as [q | k | v] rows, as llama.cpp reads it
    read_back: str = "transformers"
    requires: tuple[Requirement, ...] = ()
    refusal: Callable[[Any], str | None] = field(default=lambda config: None)


@dataclass(frozen=True)
class HandLayout:
    """Where a pre-norm rotary decoder keeps its parts, as attribute paths from the CausalLM, for the
    hand-written decode step (``core.evaluate.decode.hand``, which checks the structure itself and says why
    when a model does not fit).

    The block: ``h + o(attention(rope(q(n1(h))), rope(k(n1(h))), v(n1(h))))``, then
    ``h + down(act(gate(n2(h))) * up(n2(h)))``; optional per-head norms on q and k (Qwen3).
    """

    inner: str = "model"  # the decoder stack: embed_tokens, layers, norm, rotary_emb
    embed: str = "embed_tokens"
    layers: str = "layers"
    final_norm: str = "norm"
    rotary: str = "rotary_emb"
    attention: str = "self_attn"
    projections: tuple[str, str, str, str] = ("q_proj", "k_proj", "v_proj", "o_proj")
    head_norms: tuple[str, str] = ("q_norm", "k_norm")  # used where present
    mlp: str = "mlp"
    mlp_parts: tuple[str, str, str, str] = ("gate_proj", "up_proj", "down_proj", "act_fn")
    norms: tuple[str, str] = ("input_layernorm", "post_attention_layernorm")


LLAMA_DECODE = HandLayout()


@dataclass(frozen=True)
class Family:
    """Everything SqueezeLab needs to know about one family of causal LMs (see the module docstring)."""

    name: str
    model_types: tuple[str, ...]
    blocks: str
    norm: str
    attention: Attention
    mlp: Mlp
    folds: tuple[Fold, ...]
    embedding_scale: str | None = None  # "sqrt_hidden": the embedding module scales its rows itself
    residual: str = "sequential"  # sequential | parallel (attention and MLP read the same x) | sandwich (post norms)
    decode_layout: HandLayout | None = None  # the hand-written decode step runs the family (pre-norm rotary)
    gguf: Gguf | None = None
    gguf_refusal: str | None = None  # why a GGUF file of this family is not written
    fold_refusal: Callable[[Any], str | None] = field(default=lambda config: None)

    def folds_for(self, config: Any) -> list[Fold]:
        """The folds that are exact for ``config``."""
        return [fold for fold in self.folds if fold.when is None or fold.when(config)]


_LLAMA_ATTENTION = Attention(SEPARATE, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.o_proj")
_LLAMA_MLP = Mlp(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", ("intermediate_size",))
_LLAMA_FOLDS = (
    Fold("norm", "input_layernorm", _LLAMA_ATTENTION.qkv),
    Fold("heads", "self_attn.v_proj", ("self_attn.o_proj",)),
    Fold("norm", "post_attention_layernorm", _LLAMA_MLP.inputs),
    Fold("rows", "mlp.up_proj", ("mlp.down_proj",)),
)
# Gemma: the MLP reads pre_feedforward_layernorm; post_attention_layernorm normalizes the attention's output
_GEMMA_FOLDS = (
    Fold("norm", "input_layernorm", _LLAMA_ATTENTION.qkv),
    Fold("heads", "self_attn.v_proj", ("self_attn.o_proj",)),
    Fold("norm", "pre_feedforward_layernorm", _LLAMA_MLP.inputs),
    Fold("rows", "mlp.up_proj", ("mlp.down_proj",)),
)
_LLAMA_GGUF_KEYS = ("key_length", "rope_dimensions")
_GEMMA_GGUF_KEYS = ("key_length", "sliding_window", "softcapping")


def _relu(config: Any) -> bool:
    return getattr(config, "activation_function", None) == "relu"


def _opt_refusal(config: Any) -> str | None:
    if not getattr(config, "do_layer_norm_before", True):
        return ("OPT with do_layer_norm_before: false (OPT-350m) normalizes after each sub-block, so no norm sits "
                "before the linears")
    if not getattr(config, "layer_norm_elementwise_affine", True):
        return "OPT norms without weights (layer_norm_elementwise_affine: false) have nothing to fold a scale into"
    return None


def _falcon_parallel(config: Any) -> bool:
    return not config.new_decoder_architecture and config.parallel_attn


def _falcon_two_norms(config: Any) -> bool:
    return bool(config.new_decoder_architecture) and (config.num_ln_in_parallel_attn or 2) == 2


def _falcon_sequential(config: Any) -> bool:
    return not config.new_decoder_architecture and not config.parallel_attn


_FALCON_QKV, _FALCON_UP = "self_attention.query_key_value", "mlp.dense_h_to_4h"
# llama.cpp's MLP activations: SiLU (Llama-style gated MLPs), GELU in its tanh form (the exact, erf GELU of GPT-NeoX
# and Falcon differs from it by less than llama.cpp's own fp16 GELU table does)
_SILU = Requirement("hidden_act", ("silu",), "runs SiLU in the MLP")
_GELUS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_GPT2_GGUF = (Requirement("activation_function", _GELUS, "runs GELU in the MLP"),
              Requirement("scale_attn_weights", (True,), "scales attention scores by 1/sqrt(head size)"),
              Requirement("scale_attn_by_inverse_layer_idx", (False,), "does not scale attention by 1/layer"))
_NEOX_GGUF = (Requirement("hidden_act", _GELUS, "runs GELU in the MLP"),
              Requirement("attention_bias", (True,), "reads attention biases"))
_FALCON_GGUF = (Requirement("activation", _GELUS, "runs GELU in the MLP"),
                Requirement("alibi", (False,), "has rotary positions only, no ALiBi (as Falcon-RW uses)"),
                Requirement("parallel_attn", (True,), "adds attention and MLP in parallel"),
                Requirement("bias", (False,), "has no linear biases"))
_GEMMA_GGUF = (Requirement("hidden_activation", _GELUS, "runs GELU in the MLP"),)


def _gemma_refusal(layers_of_27b: int, soft_caps: bool) -> Callable[[Any], str | None]:
    """llama.cpp's Gemma scales queries by 1/sqrt(head size), or by 1/sqrt(hidden / heads) at the 27B model's block
    count (transformers: by 1/sqrt(query_pre_attn_scalar)); Gemma-2 always soft-caps, Gemma-3 never does."""

    def refusal(config: Any) -> str | None:
        wide = config.num_hidden_layers == layers_of_27b
        expected = config.hidden_size // config.num_attention_heads if wide else config.head_dim
        if config.query_pre_attn_scalar != expected:
            return (f"llama.cpp scales this Gemma's queries by 1/sqrt({expected}) (from its head size and block "
                    f"count), and this model by 1/sqrt({config.query_pre_attn_scalar}) (query_pre_attn_scalar)")
        caps = [key for key in ("attn_logit_softcapping", "final_logit_softcapping")[not soft_caps:]
                if (getattr(config, key, None) is not None) != soft_caps]
        return (f"llama.cpp's Gemma {'always soft-caps' if soft_caps else 'does not soft-cap'} here, and this model "
                f"has {caps[0]}: {getattr(config, caps[0], None)!r}") if caps else None
    return refusal


FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("llama", ("llama",), "model.layers", NORM_RMS, _LLAMA_ATTENTION, _LLAMA_MLP, _LLAMA_FOLDS,
           decode_layout=LLAMA_DECODE, gguf=Gguf("llama", "LLAMA", permute_qk=True, keys=_LLAMA_GGUF_KEYS,
                                            requires=(_SILU,))),
    Family("mistral", ("mistral",), "model.layers", NORM_RMS, _LLAMA_ATTENTION, _LLAMA_MLP, _LLAMA_FOLDS,
           decode_layout=LLAMA_DECODE, gguf=Gguf("llama", "LLAMA", permute_qk=True, keys=_LLAMA_GGUF_KEYS,
                                            requires=(_SILU,))),
    Family("qwen2", ("qwen2",), "model.layers", NORM_RMS, _LLAMA_ATTENTION, _LLAMA_MLP, _LLAMA_FOLDS,
           decode_layout=LLAMA_DECODE, gguf=Gguf("qwen2", "QWEN2", requires=(_SILU,))),
    Family("qwen3", ("qwen3",), "model.layers", NORM_RMS, _LLAMA_ATTENTION, _LLAMA_MLP, _LLAMA_FOLDS,
           decode_layout=LLAMA_DECODE, gguf=Gguf("qwen3", "QWEN3", keys=("key_length",), requires=(_SILU,))),
    Family("gemma2", ("gemma2",), "model.layers", NORM_RMS_PLUS_ONE, _LLAMA_ATTENTION, _LLAMA_MLP, _GEMMA_FOLDS,
           embedding_scale="sqrt_hidden", residual="sandwich",
           gguf=Gguf("gemma2", "GEMMA2", norm_shift=1.0, keys=_GEMMA_GGUF_KEYS, requires=_GEMMA_GGUF,
                     refusal=_gemma_refusal(46, soft_caps=True))),
    Family("gemma3", ("gemma3_text",), "model.layers", NORM_RMS_PLUS_ONE, _LLAMA_ATTENTION, _LLAMA_MLP, _GEMMA_FOLDS,
           embedding_scale="sqrt_hidden", residual="sandwich",
           gguf=Gguf("gemma3", "GEMMA3", norm_shift=1.0, keys=("key_length", "sliding_window", "rope_swa"),
                     requires=_GEMMA_GGUF, refusal=_gemma_refusal(62, soft_caps=False))),
    Family("phi3", ("phi3",), "model.layers", NORM_RMS,
           Attention(STACKED, ("self_attn.qkv_proj",), "self_attn.o_proj"),
           Mlp(("mlp.gate_up_proj",), "mlp.down_proj", ("intermediate_size",), fused_halves=True),
           (Fold("norm", "input_layernorm", ("self_attn.qkv_proj",)),
            Fold("heads", "self_attn.qkv_proj", ("self_attn.o_proj",), rows="values"),
            Fold("norm", "post_attention_layernorm", ("mlp.gate_up_proj",)),
            Fold("rows", "mlp.gate_up_proj", ("mlp.down_proj",), rows="second_half")),
           gguf=Gguf("phi3", "PHI3", keys=("rope_dimensions",), requires=(_SILU,))),
    Family("gpt2", ("gpt2",), "transformer.h", NORM_LAYER,
           Attention(STACKED, ("attn.c_attn",), "attn.c_proj", head_dim_key=None),
           Mlp(("mlp.c_fc",), "mlp.c_proj", ("n_inner",)),
           (Fold("norm", "ln_1", ("attn.c_attn",)), Fold("heads", "attn.c_attn", ("attn.c_proj",), rows="values"),
            Fold("norm", "ln_2", ("mlp.c_fc",))),  # c_proj reads GELU(c_fc): no exact fold
           gguf=Gguf("gpt2", "GPT2", eps_key="layer_norm_epsilon", rope=False, read_back="squeezelab",
                     requires=_GPT2_GGUF)),
    Family("opt", ("opt",), "model.decoder.layers", NORM_LAYER,
           Attention(SEPARATE, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.out_proj",
                     head_dim_key=None),
           Mlp(("fc1",), "fc2", ("ffn_dim", "intermediate_size")),
           (Fold("norm", "self_attn_layer_norm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
            Fold("heads", "self_attn.v_proj", ("self_attn.out_proj",)),
            Fold("norm", "final_layer_norm", ("fc1",)),
            Fold("rows", "fc1", ("fc2",), when=_relu)),  # relu(x / s) = relu(x) / s for s > 0
           gguf_refusal="llama.cpp has no OPT architecture", fold_refusal=_opt_refusal),
    Family("gpt_neox", ("gpt_neox",), "gpt_neox.layers", NORM_LAYER,
           Attention(INTERLEAVED, ("attention.query_key_value",), "attention.dense", head_dim_key=None),
           Mlp(("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", ("intermediate_size",)),
           (Fold("norm", "input_layernorm", ("attention.query_key_value",)),
            Fold("heads", "attention.query_key_value", ("attention.dense",), rows="values"),
            Fold("norm", "post_attention_layernorm", ("mlp.dense_h_to_4h",))),  # dense_4h_to_h reads GELU
           residual="parallel",
           gguf=Gguf("gptneox", "GPTNEOX", keys=("rope_dimensions", "parallel_residual"), eps_key="layer_norm_eps",
                     stack_qkv=True, read_back="squeezelab", requires=_NEOX_GGUF)),
    Family("falcon", ("falcon",), "transformer.h", NORM_LAYER,
           Attention(GROUPED, (_FALCON_QKV,), "self_attention.dense", head_dim_key=None),
           Mlp((_FALCON_UP,), "mlp.dense_4h_to_h", ("ffn_hidden_size",)),
           (Fold("norm", "input_layernorm", (_FALCON_QKV, _FALCON_UP), when=_falcon_parallel),
            Fold("norm", "input_layernorm", (_FALCON_QKV,), when=_falcon_sequential),
            Fold("norm", "post_attention_layernorm", (_FALCON_UP,), when=_falcon_sequential),
            Fold("norm", "ln_attn", (_FALCON_QKV,), when=_falcon_two_norms),
            Fold("norm", "ln_mlp", (_FALCON_UP,), when=_falcon_two_norms),
            Fold("heads", _FALCON_QKV, ("self_attention.dense",), rows="values")),
           residual="parallel",
           gguf=Gguf("falcon", "FALCON", eps_key="layer_norm_epsilon", stack_qkv=True, read_back="squeezelab",
                     requires=_FALCON_GGUF)),
)}

_BY_MODEL_TYPE = {model_type: family for family in FAMILIES.values() for model_type in family.model_types}


def family_of(model: nn.Module | Any) -> Family | None:
    """The family of a model (or of its config), or None when SqueezeLab does not know its layout."""
    config = getattr(model, "config", model)
    return _BY_MODEL_TYPE.get(getattr(config, "model_type", None))


def known_families() -> str:
    return ", ".join(sorted(_BY_MODEL_TYPE))


def require_family(model: nn.Module, what: str) -> Family:
    """The model's family, or a SpecError saying that ``what`` needs a layout SqueezeLab knows."""
    family = family_of(model)
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise SpecError(f"{what} needs to know the model's layout, and model_type {model_type!r} is not one SqueezeLab "
                        f"knows ({known_families()})")
    return family


def family_of_block(block: nn.Module) -> Family | None:
    """The family of a decoder block, from the config its attention (or any submodule) holds."""
    config = next((m.config for m in block.modules() if hasattr(m, "config")), None)
    return family_of(config) if config is not None else None


def part(block: nn.Module, name: str) -> nn.Module | None:
    """The block's submodule at the block-relative ``name``, or None."""
    try:
        return block.get_submodule(name)
    except AttributeError:
        return None
