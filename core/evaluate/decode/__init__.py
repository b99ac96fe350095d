"""The decode loops that time (and stream) generation at batch 1, each checked against the model's forward.

* ``hand``     - the hand-written one-token step of pre-norm rotary decoders (Llama, Mistral, Qwen2/3).
* ``compiled`` - ``torch.compile`` of a step: inductor settings, compile time apart, eager on failure.
* ``loops``    - the decoders: prefill with the model's forward, then a step over a StaticCache (or a
                 DynamicCache for classes without one).
* ``choice``   - which decoder runs a model: the step order per kernel, fastest first, kept only when exact,
                 cached on the model. Where the hand step finds a family's parts is in ``core.architectures``.
"""

from core.evaluate.decode.choice import (
    COMPILE_MIN_PARAMS,
    LOOP_ORDER,
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
from core.evaluate.decode.hand import HandStep, hand_layout
from core.evaluate.decode.loops import (
    DYNAMIC_LOOP,
    STEPS,
    DynamicCacheDecoder,
    StaticCacheDecoder,
    static_cache_reason,
)

__all__ = ["COMPILE_MIN_PARAMS", "DEFAULT_SETTINGS", "DYNAMIC_LOOP", "LOOP_ORDER", "STEPS",
           "ChosenDecoder", "CompileSettings", "CompiledStep", "DecoderCache", "DynamicCacheDecoder",
           "HandStep", "StaticCacheDecoder", "StepPlan", "build", "check_exact", "hand_layout",
           "kernel_kind", "open_decoder", "plan_steps", "static_cache_reason", "tolerance"]
