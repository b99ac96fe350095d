"""The decoders: prefill with the model's own forward, then one token per call through a decode step.

Every decoder answers ``forward(token_ids [1, T]) -> logits of the last position [1, vocab]`` (the
prompt first, then one token at a time) and ``reset()``. ``StaticCacheDecoder`` keeps keys and values
in a transformers ``StaticCache`` sized once; its decode step is one of

* ``compiled``      - the model's own forward on one token, compiled by ``torch.compile`` (any family
                      whose transformers class supports the static cache);
* ``hand``          - the hand-written step of ``core.evaluate.decode.hand`` (pre-norm rotary families);
* ``hand-compiled`` - that step, compiled;
* ``eager``         - the model's own forward on one token, not compiled.

The prefill is always the model's own forward (eager, only the last position's logits), so it is
never slower than transformers' forward on the same prompt. ``DynamicCacheDecoder`` is the last
resort for classes without a static cache: the model's forward with a growing ``DynamicCache``.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from core.evaluate.decode.compiled import DEFAULT_SETTINGS, CompiledStep, CompileSettings
from core.evaluate.decode.hand import HandStep, hand_layout

STEPS = ("compiled", "hand", "hand-compiled", "eager")
PREFILL = "prefill: transformers forward"
STEP_LABELS = {
    "compiled": "decode: transformers forward + StaticCache, torch.compile ({settings})",
    "hand": "decode: hand-written step (core.evaluate.decode.hand) over StaticCache, eager",
    "hand-compiled": "decode: hand-written step over StaticCache, torch.compile ({settings})",
    "eager": "decode: transformers forward + StaticCache, eager",
}
DYNAMIC_LOOP = "transformers forward + DynamicCache, eager"


class ForwardCall:
    """How to call a model's forward with a cache, read once from its signature: transformers' ``cache=``
    (``past_key_values`` only for a class that takes nothing else), last-position logits only where the
    class allows, explicit positions where it takes them."""

    def __init__(self, model: nn.Module) -> None:
        accepted = set(inspect.signature(model.forward).parameters)
        self.takes_cache = "cache" in accepted or "past_key_values" in accepted
        self.cache_name = "cache" if "cache" in accepted or "past_key_values" not in accepted else "past_key_values"
        self.extra = {"use_cache": True, **({"logits_to_keep": 1} if "logits_to_keep" in accepted else {})}
        self.takes_positions = "position_ids" in accepted

    def kwargs(self, cache: object, positions: torch.Tensor | None) -> dict:
        kwargs = {self.cache_name: cache, **self.extra}
        if positions is not None and self.takes_positions:
            kwargs["position_ids"] = positions.unsqueeze(0)
        return kwargs


def static_cache_reason(model: nn.Module) -> str | None:
    """Why transformers' StaticCache cannot hold this model's keys and values (None: it can)."""
    if not getattr(model, "_can_compile_fullgraph", False):
        return f"{type(model).__name__} does not support transformers' static cache"
    if getattr(model, "config", None) is None:
        return "the model has no transformers config"
    return None


class StaticCacheDecoder:
    """Prefill + one token per call over a ``StaticCache`` of ``max_len`` positions (see the module docstring)."""

    def __init__(self, model: nn.Module, max_len: int, step: str = "eager",
                 settings: CompileSettings = DEFAULT_SETTINGS) -> None:
        from transformers import StaticCache

        if step not in STEPS:
            raise ValueError(f"unknown decode step {step!r}; choose one of {', '.join(STEPS)}")
        reason = static_cache_reason(model)
        if reason:
            raise ValueError(f"the static-cache decoder cannot run this model: {reason}")
        self.model, self.max_len, self.step_name, self.settings = model, max_len, step, settings
        self.call = ForwardCall(model)
        device = next(model.parameters()).device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.positions = torch.arange(max_len, device=device)
        self.hand = HandStep(model, hand_layout(model), max_len) if "hand" in step else None
        eager = self._hand_step if self.hand is not None else self._forward_step
        self.step = CompiledStep(eager, settings) if step.endswith("compiled") else eager
        self.length = 0

    @property
    def loop(self) -> str:
        """What ran: the prefill and the decode step (with the compile settings, or why it ran eager)."""
        label = STEP_LABELS[self.step_name].format(settings=self.settings.label)
        failure = self.failure
        return f"{PREFILL}; {label}" + (f" [{failure}]" if failure else "")

    @property
    def failure(self) -> str | None:
        return getattr(self.step, "failure", None)

    @property
    def compile_s(self) -> float | None:
        """Seconds the first compiled call took (None: this step is not compiled)."""
        return self.step.compile_s if isinstance(self.step, CompiledStep) else None

    def reset(self) -> None:
        with torch.inference_mode():
            self.cache.reset()
        self.length = 0

    def _forward_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=token, **self.call.kwargs(self.cache, position)).logits[:, -1]

    def _hand_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.hand(token, position)

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Feed token ids [1, T] after what was fed before; the logits of the last position [1, vocab]."""
        start, tokens = self.length, token_ids.shape[1]
        if tokens > 1 and start != 0:
            raise ValueError("several tokens at once only as the first call (the prefill)")
        if start + tokens > self.max_len:
            raise ValueError(f"{start + tokens} positions exceed the cache of {self.max_len}")
        positions = self.positions[start:start + tokens]
        if start == 0:
            out = self.model(input_ids=token_ids, **self.call.kwargs(self.cache, positions))
            logits = out.logits[:, -1]
            if self.hand is not None:
                self.hand.bind(self.cache)  # the prefill allocated the cache's tensors
        else:
            logits = self.step(token_ids, positions)
        self.length = start + tokens
        return logits


class DynamicCacheDecoder:
    """The model's own forward with a ``DynamicCache`` (classes without a static cache)."""

    loop = DYNAMIC_LOOP
    compile_s = None
    failure = None

    def __init__(self, model: nn.Module, max_len: int) -> None:
        self.model, self.max_len, self.call = model, max_len, ForwardCall(model)
        self.cache, self.length = None, 0

    def reset(self) -> None:
        self.cache, self.length = None, 0

    @torch.inference_mode()
    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.length + token_ids.shape[1] > self.max_len:
            raise ValueError(f"{self.length + token_ids.shape[1]} positions exceed the cache of {self.max_len}")
        if self.cache is None and self.call.cache_name == "cache" and getattr(self.model, "config", None) is not None:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=token_ids, **self.call.kwargs(self.cache, None))
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        self.length += token_ids.shape[1]
        return out.logits[:, -1]
