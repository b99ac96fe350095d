"""The prompt box: a model's (or a stored result's) continuation of a prompt, streamed, with its speed.

The text comes from ``core.generate_stream``: the decoder that times the model, checked against its
forward, so what the box shows is what the measured model writes, at the speed it was measured.
A stored result's model is rebuilt once per process (its exported artifact, else its recipe's steps
run again) and kept while it is among the last two asked for.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import streamlit as st

from core import LoadedModel, generate_stream, load_for_generation

DEFAULT_TOKENS = 40


@st.cache_resource(show_spinner="Rebuilding the result's model (its artifact, or its recipe's steps again)...",
                   max_entries=2)
def result_model(result_id: str, results_dir: str) -> LoadedModel:
    """The model of a stored result, built once (shared and read-only, like the base model)."""
    return load_for_generation(result_id, results_dir).loaded


def _speed_caption(last) -> str:  # noqa: ANN001 - core.Generated
    speed = f"{last.decode_tok_s:.1f} tokens/s" if last.decode_tok_s else "too few tokens for a speed"
    stop = {"eos": "stopped at the end-of-text token", "max_new_tokens": "stopped at the token limit",
            "cancelled": "stopped"}.get(last.stop, "")
    return (f"{last.tokens} tokens · {speed} decode · prefill {last.prefill_ms:.0f} ms for {last.prompt_tokens} "
            f"prompt tokens · {stop} · {last.loop}")


def prompt_box(key: str, get_model: Callable[[], LoadedModel], default_prompt: str,
               label: str = "Generate (greedy)") -> None:
    """A prompt, a token count and a button; on click the continuation streams in, then its speed."""
    prompt = st.text_area("Prompt", value=default_prompt, key=f"{key}_prompt", height=100)
    new_tokens = st.slider("New tokens", 1, 128, DEFAULT_TOKENS, key=f"{key}_new_tokens")
    if not st.button(label, key=f"{key}_generate"):
        return
    loaded = get_model()
    shown, text, last = st.empty(), "", None
    with st.spinner("Preparing the decoder (compiled once per model where that pays)..."):
        pieces = generate_stream(loaded.model, loaded.tokenizer, prompt, new_tokens, chat=False)
        first = next(pieces, None)
    for piece in itertools.chain([first] if first is not None else [], pieces):
        text, last = text + piece.text, piece
        shown.code(prompt + text, language=None, wrap_lines=True)
    if last is not None:
        st.caption(_speed_caption(last))
        for note in last.notes:
            st.caption(f"Note: {note}")
