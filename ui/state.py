"""What the sidebar picked (model, device, dtype, evaluation text), which page is shown, and which job
the user follows.

All live in ``st.session_state``; the job id is mirrored in ``st.query_params["job"]`` so that a
browser reload, which starts a new session, reconnects to the job still running in the worker (the
sidebar's own settings keep themselves in the URL through their widgets).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.evaluate import EvalSpec

_SELECTION_KEY = "squeezelab_selection"
_JOB_KEY = "squeezelab_job"
_PAGE_KEY = "squeezelab_page"
JOB_QUERY_PARAM = "job"


@dataclass(frozen=True)
class Selection:
    """The sidebar's choices; ``device`` and ``dtype`` are "auto" or an explicit name."""

    model: str
    device: str = "auto"
    dtype: str = "auto"
    text: str = "sample"  # a text source as core.data understands it (name or file path)
    text_label: str = "sample text"
    seqlen: int | None = None  # None: min(512, the model's context)
    max_windows: int | None = 32  # None: every window
    latency: bool = True
    allow_pickle: bool = False  # opt-in: weights stored only as pickle (unpickling can run code)
    trust_remote_code: bool = False  # opt-in: the model repository's own Python code

    @property
    def load_options(self) -> dict[str, bool]:
        """The opt-ins as keyword arguments of ``core.models.load`` and as recipe keys."""
        return {"allow_pickle": self.allow_pickle, "trust_remote_code": self.trust_remote_code}

    @property
    def recipe_device(self) -> str | None:
        """The device as a recipe writes it (None for auto)."""
        return None if self.device == "auto" else self.device

    @property
    def recipe_dtype(self) -> str | None:
        return None if self.dtype == "auto" else self.dtype

    def eval_spec(self, context_length: int) -> tuple[EvalSpec, str | None]:
        """The evaluation spec for a model with ``context_length`` positions, and a note when the
        asked-for window length had to be cut to fit that context."""
        seqlen, note = self.seqlen, None
        if seqlen is not None and seqlen > context_length:
            note = (f"seqlen {seqlen} is longer than the model's context ({context_length} tokens); "
                    f"windows of {context_length} tokens are used instead")
            seqlen = context_length
        return EvalSpec(text=self.text, seqlen=seqlen, max_windows=self.max_windows, latency=self.latency), note

    def protocol(self, context_length: int) -> str:
        """How figures on this selection are measured, printed beside them."""
        spec, _ = self.eval_spec(context_length)
        windows = "every window" if spec.max_windows is None else f"at most {spec.max_windows} windows"
        return f"{self.text_label}, seqlen {spec.resolved_seqlen(context_length)}, {windows}"


def set_selection(selection: Selection) -> None:
    st.session_state[_SELECTION_KEY] = selection


def selection() -> Selection:
    """What the sidebar picked in this run (the sidebar renders before every page)."""
    found = st.session_state.get(_SELECTION_KEY)
    return found if isinstance(found, Selection) else Selection(model="sample:teacher")


def set_current_page(path: str) -> None:
    """Remember which page this run shows (its file, e.g. "pages/prune.py"); app.py sets it before the page runs."""
    st.session_state[_PAGE_KEY] = path


def current_page() -> str:
    """The file of the page this run shows ("" before app.py has said)."""
    return str(st.session_state.get(_PAGE_KEY, ""))


def current_job_id() -> str | None:
    """The job this session follows: from the URL first (a reload), else from the session."""
    from_url = st.query_params.get(JOB_QUERY_PARAM)
    job_id = from_url or st.session_state.get(_JOB_KEY)
    if job_id and not from_url:
        st.query_params[JOB_QUERY_PARAM] = job_id  # a page switch drops it from the URL: put it back
    return job_id or None


def remember_job(job_id: str) -> None:
    st.session_state[_JOB_KEY] = job_id
    st.query_params[JOB_QUERY_PARAM] = job_id


def forget_job() -> None:
    st.session_state.pop(_JOB_KEY, None)
    if JOB_QUERY_PARAM in st.query_params:
        del st.query_params[JOB_QUERY_PARAM]


def flag(name: str) -> bool:
    """A per-session boolean (e.g. "the user asked for this baseline"), False until set."""
    return bool(st.session_state.get(f"squeezelab_flag::{name}"))


def set_flag(name: str, value: bool = True) -> None:
    st.session_state[f"squeezelab_flag::{name}"] = value
