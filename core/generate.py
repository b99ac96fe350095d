"""Generate text with a model or a stored result, streamed as it decodes, with its speed.

    for piece in generate_stream(loaded.model, loaded.tokenizer, "Once upon a time", max_new_tokens=64):
        print(piece.text, end="", flush=True)

The text comes from the same decoders that time a model (``core.evaluate.decode``): the fastest one
whose logits equal the model's own forward on this prompt, compiled where that pays. So what a user
reads is what the measured model writes, at the speed it was measured. ``load_for_generation``
accepts a model reference or a stored result id: a result's exported artifact is loaded when it has
one; otherwise its recipe's steps are run again on the base model (no evaluation).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import SpecError
from core.evaluate.decode import open_decoder
from core.models.loading import clone, load
from core.models.source import LoadedModel
from core.progress import CancelFn, ProgressFn, report

RESULT_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")  # core.store.ResultStore.start's ids
CACHE_STEP = 128  # decoder lengths are rounded up to this, so prompts of similar length reuse a compiled one


@dataclass(frozen=True)
class Generated:
    """One piece of streamed text and where the generation stands."""

    text: str  # the new text since the last piece ("" when a token completes no character yet)
    tokens: int  # tokens generated so far
    prompt_tokens: int
    prefill_ms: float
    decode_tok_s: float | None  # tokens/s of the decode steps so far (None before the second token)
    loop: str  # the decoder that ran (core.evaluate.decode)
    done: bool = False
    stop: str | None = None  # "eos", "max_new_tokens" or "cancelled" on the last piece
    notes: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class GenerationModel:
    """A loaded model ready to generate, and what it is."""

    loaded: LoadedModel
    label: str  # "sample:teacher" or "result 20250101-120000-abcdef (rtn w4 g64 asym, from its artifact)"


def prompt_ids(tokenizer, prompt: str, chat: bool | None = None) -> torch.Tensor:  # noqa: ANN001
    """Token ids [1, P] of ``prompt``; through the tokenizer's chat template when it has one (``chat`` None)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise SpecError("the prompt is empty; give some text to continue, e.g. --prompt 'Once upon a time'")
    template = getattr(tokenizer, "chat_template", None)
    if chat is True and not template:
        raise SpecError("this model's tokenizer has no chat template; generate without --chat")
    if (chat is None and template) or chat:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    return ids.reshape(1, -1)


def _pick(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """The next token [1, 1]: greedy at temperature 0, else sampled from softmax(logits / temperature)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


class _TextStream:
    """Decodes the generated ids as a whole and hands out only what is new (multi-byte characters whole)."""

    def __init__(self, tokenizer) -> None:  # noqa: ANN001
        self.tokenizer, self.ids, self.said = tokenizer, [], ""

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half of a character: wait for the rest
            return ""
        new, self.said = text[len(self.said):], text
        return new


def _check_lengths(prompt_tokens: int, max_new_tokens: int, context: int) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise SpecError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
    if prompt_tokens + max_new_tokens > context:
        raise SpecError(f"the prompt ({prompt_tokens} tokens) and {max_new_tokens} new tokens exceed the model's "
                        f"context of {context} tokens; shorten the prompt or ask for at most "
                        f"{max(0, context - prompt_tokens)} new tokens")


def _eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:  # noqa: ANN001
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list | tuple) else [configured])
    return {int(i) for i in ids if i is not None}


def generate_stream(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int = 64,  # noqa: ANN001
                    temperature: float = 0.0, seed: int = 0, chat: bool | None = None, compile: bool | None = None,
                    cancel: CancelFn | None = None, on_progress: ProgressFn | None = None) -> Iterator[Generated]:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens, one ``Generated`` piece per token.

    Greedy at ``temperature`` 0, else sampled (``seed``). Stops at the model's end-of-text token.
    ``decode_tok_s`` counts the decode steps alone (not the prefill, not the time the caller spends
    with each piece). ``compile`` as in ``core.evaluate.measure_latency`` (None: when it pays).
    """
    from core.models.source import context_length

    device = next(model.parameters()).device
    ids = prompt_ids(tokenizer, prompt, chat).to(device)
    prompt_tokens = ids.shape[1]
    context = context_length(model.config)
    _check_lengths(prompt_tokens, max_new_tokens, context)
    max_len = min(context, -(-(prompt_tokens + max_new_tokens + 4) // CACHE_STEP) * CACHE_STEP)
    eos, generator = _eos_ids(model, tokenizer), torch.Generator().manual_seed(seed)
    report(on_progress, "prepare decoder", 0.0)
    with open_decoder(model, ids, max_len, compile) as chosen:
        decoder, stream = chosen.decoder, _TextStream(tokenizer)
        decoder.reset()
        started = time.perf_counter()
        logits = decoder.forward(ids)
        prefill_ms, decode_s = 1000 * (time.perf_counter() - started), 0.0
        piece = dict(prompt_tokens=prompt_tokens, prefill_ms=prefill_ms, loop=chosen.loop, notes=tuple(chosen.notes))
        for made in range(max_new_tokens):
            token = _pick(logits, temperature, generator)
            if int(token) in eos:
                yield Generated("", made, decode_tok_s=_rate(made - 1, decode_s), done=True, stop="eos", **piece)
                return
            last = made + 1 == max_new_tokens
            stop = "cancelled" if cancel is not None and cancel() and not last else None
            yield Generated(stream.add(int(token)), made + 1, decode_tok_s=_rate(made, decode_s),
                            done=last or stop is not None, stop="max_new_tokens" if last else stop, **piece)
            if last or stop:
                return
            started = time.perf_counter()
            logits = decoder.forward(token)
            decode_s += time.perf_counter() - started


def _rate(steps: int, seconds: float) -> float | None:
    return steps / seconds if steps > 0 and seconds > 0 else None


def generate(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int = 64, **options) -> Generated:  # noqa: ANN001
    """The whole continuation as one piece (``generate_stream``'s pieces joined)."""
    pieces = list(generate_stream(model, tokenizer, prompt, max_new_tokens, **options))
    last = pieces[-1]
    return Generated("".join(p.text for p in pieces), last.tokens, last.prompt_tokens, last.prefill_ms,
                     last.decode_tok_s, last.loop, True, last.stop, last.notes)


# ---- what to generate with: a model reference or a stored result ----


def load_for_generation(ref: str, results_dir: Path | str | None = None, device: str | None = None,
                        allow_pickle: bool = False, trust_remote_code: bool = False,
                        on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> GenerationModel:
    """The model behind ``ref``: a stored result id (its exported artifact, else its recipe's steps run
    again on the base model) or a model reference (``sample:teacher``, a folder, a .gguf file, a Hub id)."""
    from core.store import ResultStore, UnknownResultError

    ref = ref.strip()
    if RESULT_ID.fullmatch(ref):
        store = ResultStore(results_dir, read_only=True)
        try:
            row = store.get(ref)
        except UnknownResultError:
            raise UnknownResultError(f"no result with id {ref!r} in {store.db_path} (see `squeezelab history` for "
                                     "the ids that exist)") from None
        return _result_model(row, device, allow_pickle, trust_remote_code, on_progress, cancel)
    report(on_progress, "load", 0.0)
    loaded = load(ref, device=device, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return GenerationModel(loaded, ref)


def _result_model(row, device: str | None, allow_pickle: bool, trust_remote_code: bool,  # noqa: ANN001
                  on_progress: ProgressFn | None, cancel: CancelFn | None) -> GenerationModel:
    import yaml

    from core.models.exported import load_exported
    from core.recipe import pipeline
    from core.recipe.recipe import Recipe

    if row.status not in ("ok", "cancelled"):
        raise SpecError(f"result {row.id} did not finish ({row.status}); generate with a finished result")
    exported = (row.details or {}).get("export") or {}
    artifact = exported.get("path")  # the exported folder (a GGUF export's holds its one .gguf file)
    if artifact and Path(artifact).exists():
        report(on_progress, "load", 0.0)
        loaded = load_exported(artifact, device=device)
        return GenerationModel(loaded, f"result {row.id} (its exported {exported.get('format')} artifact)")
    try:
        recipe = Recipe.from_dict(yaml.safe_load(row.recipe))
    except (yaml.YAMLError, SpecError) as exc:
        raise SpecError(f"the recipe stored with result {row.id} cannot be run again ({exc})") from exc
    report(on_progress, "load", 0.0)
    options = {"allow_pickle": recipe.allow_pickle or allow_pickle,
               "trust_remote_code": recipe.trust_remote_code or trust_remote_code}
    loaded = load(recipe.model, device=device or recipe.device, dtype=recipe.dtype, **options)
    model = clone(loaded.model) if recipe.steps else loaded.model
    context = pipeline.step_context(recipe, loaded, on_progress, cancel)
    context.teacher = loaded.model
    model, _ = pipeline.apply_steps(recipe, model, context)
    rebuilt = LoadedModel(model, loaded.tokenizer, loaded.source, loaded.device, next(model.parameters()).dtype)
    return GenerationModel(rebuilt, f"result {row.id} (its recipe's steps run again on {recipe.model})")
