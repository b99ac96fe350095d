"""What the decode loops need to know about a model family: one table, data only.

A family is a transformers ``model_type``. Every causal LM whose class supports transformers'
static cache (``_can_compile_fullgraph``) decodes through the generic path with no entry here:
its own forward over a ``StaticCache``, compiled by ``torch.compile`` (``core.evaluate.decode.loops``).
An entry adds what the generic path cannot know:

* ``hand``  - the attribute names of a pre-norm rotary block (``HandLayout``), when the hand-written
              step of ``core.evaluate.decode.hand`` runs the family exactly. The step checks the
              structure itself (``hand.unsupported_reason``) and says why when it does not fit.
* ``note``  - why a loop is off for the family, as measured (shown beside its figures).

Adding a family is one line here (or none). Whether the hand step or the compiled generic step is
faster for a kind of kernel is in ``LOOP_ORDER``; ``bench/accel_bench.py`` times every step side by side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HandLayout:
    """Where a pre-norm rotary decoder keeps its parts, as attribute paths from the CausalLM.

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


LLAMA = HandLayout()


@dataclass(frozen=True)
class FamilyDecode:
    """One family's decode facts (see the module docstring)."""

    hand: HandLayout | None = None
    note: str | None = None


# model_type -> facts; a family not listed gets GENERIC
FAMILIES: dict[str, FamilyDecode] = {
    "llama": FamilyDecode(hand=LLAMA),
    "mistral": FamilyDecode(hand=LLAMA),
    "qwen2": FamilyDecode(hand=LLAMA),
    "qwen3": FamilyDecode(hand=LLAMA),
}
GENERIC = FamilyDecode()

# The decode steps, fastest first, per kind of matmul kernel the model runs (``kernel_kind``); the
# first that can run the model exactly is used. bench/accel_bench.py times them side by side; where the
# generic compiled step is within 10% of the hand step it comes first, so a family needs no entry.
# fbgemm's int8 weights are an opaque object torch.compile cannot trace, so int8_dynamic keeps the
# hand step, whose stacked q/k/v and gate/up matmuls enter fbgemm once per stack.
LOOP_ORDER: dict[str, tuple[str, ...]] = {
    "dense": ("compiled", "hand", "eager"),
    "int8_weight_only": ("compiled", "hand", "eager"),
    "int4_weight_only": ("compiled", "hand", "eager"),
    "int8_dynamic": ("hand", "compiled", "eager"),
    "dequant": ("compiled", "hand", "eager"),
}


def family_of(model_type: str | None) -> FamilyDecode:
    """The facts for a ``model_type`` (the generic ones when the family has no entry)."""
    return FAMILIES.get(model_type or "", GENERIC)
