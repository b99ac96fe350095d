"""The decode loops that time (and stream) generation at batch 1, each checked against the model's forward.

* ``families`` - one table of what a family needs (hand-step layout, notes) and the step order per kernel.
* ``hand``     - the hand-written one-token step of pre-norm rotary decoders (Llama, Mistral, Qwen2/3).
* ``compiled`` - ``torch.compile`` of a step: inductor settings, compile time apart, eager on failure.
* ``loops``    - the decoders: prefill with the model's forward, then a step over a StaticCache (or a
                 DynamicCache for classes without one).
* ``choice``   - which decoder runs a model: fastest first, kept only when exact, cached on the model.
"""

from core.evaluate.decode.choice import (
    COMPILE_MIN_PARAMS,
    ChosenDecoder,
    DecoderCache,
    StepPlan,
    build,
    check_exact,
    kernel_kind,
    open_decoder,
    plan_steps,
    tolerance,
)
from core.evaluate.decode.compiled import DEFAULT_SETTINGS, CompiledStep, CompileSettings
from core.evaluate.decode.families import FAMILIES, LOOP_ORDER, FamilyDecode, HandLayout, family_of
from core.evaluate.decode.hand import HandStep
from core.evaluate.decode.loops import (
    DYNAMIC_LOOP,
    STEPS,
    DynamicCacheDecoder,
    StaticCacheDecoder,
    static_cache_reason,
)

__all__ = ["COMPILE_MIN_PARAMS", "DEFAULT_SETTINGS", "DYNAMIC_LOOP", "FAMILIES", "LOOP_ORDER", "STEPS",
           "ChosenDecoder", "CompileSettings", "CompiledStep", "DecoderCache", "DynamicCacheDecoder", "FamilyDecode",
           "HandLayout", "HandStep", "StaticCacheDecoder", "StepPlan", "build", "check_exact", "family_of",
           "kernel_kind", "open_decoder", "plan_steps", "static_cache_reason", "tolerance"]
