"""The sidebar: which model, on which device and dtype, measured on which text; and the job of another page.

The evaluation settings, device and dtype live in the URL's query parameters (like ``?model=`` and
``?job=``), so a reload or a shared link keeps them. The opt-ins that let a model run code (pickle
weights, remote code) never do: a link must not be able to tick them, and they are cleared when the
model changes.
"""

from __future__ import annotations

import streamlit as st
import torch

from core import models
from core.store import default_results_dir
from ui import sources
from ui.cache import recent_models
from ui.errors import shown
from ui.job_indicator import job_indicator
from ui.state import Selection, set_selection

OTHER = "__other__"
DTYPE_OPTIONS = ("auto", "fp32", "fp16", "bf16")
URL = {"bind": "query-params"}  # the widget's value is kept in the URL, under its key
OPT_INS = {  # widget key -> (label, the one-line warning beside it)
    "allow_pickle": ("Allow pickle weights (.bin)", "unpickling can run code"),
    "trust_remote_code": ("Trust remote code", "runs code from the model's repository"),
}
_OPT_INS_MODEL = "squeezelab_opt_ins_model"  # the model the opt-ins were given for


def render() -> Selection:
    """Draw the pickers, remember the selection for the pages, and return it."""
    with st.sidebar:
        job_indicator()  # the session's job, when it belongs to another page: first, where it is seen
        st.subheader("Model")
        model = _model_picker()
        opt_ins = _opt_in_boxes(model)
        device, dtype = _device_picker()
        st.subheader("Evaluation")
        text, label = _text_picker(model)
        seqlen = st.number_input("Window length (seqlen)", min_value=8, max_value=32768, value=None, step=64,
                                 placeholder="auto: 512, or the model's context if shorter", key="eval_seqlen",
                                 help="Tokens per non-overlapping evaluation window (the papers use 2048).", **URL)
        windows = st.number_input("Windows (0 = every window)", min_value=0, max_value=100_000, value=32, step=8,
                                  key="eval_windows", help="How many windows are scored, from the start of the text.",
                                  **URL)
        latency = st.toggle("Measure speed (prefill, decode, peak memory)", value=True, key="eval_latency", **URL)
    selection = Selection(model=model, device=device, dtype=dtype, text=text, text_label=label,
                          seqlen=int(seqlen) if seqlen else None, max_windows=int(windows) or None,
                          latency=latency, **opt_ins)
    set_selection(selection)
    return selection


def _opt_in_boxes(model: str) -> dict[str, bool]:
    """A checkbox per opt-in, each with its warning, in an expander that is open while one is ticked; both are
    cleared whenever the model changes."""
    if st.session_state.get(_OPT_INS_MODEL) != model:
        for key in OPT_INS:
            st.session_state[key] = False
        st.session_state[_OPT_INS_MODEL] = model
    chosen = {}
    with st.expander("Opt-ins: code from the model", expanded=any(st.session_state.get(key) for key in OPT_INS)):
        for key, (label, warning) in OPT_INS.items():
            chosen[key] = st.checkbox(label, key=key, help="Off by default; tick it only for a model whose source "
                                                           "you trust. The run's recipe records it.")
            st.caption(f":warning: {warning[0].upper()}{warning[1:]}.")
    return chosen


def _model_picker() -> str:
    recent: list[str] = []
    with shown("Cannot read the results history"):
        recent = recent_models(str(default_results_dir()))
    choices = sources.model_choices(recent)
    choices[OTHER] = "Other: a Hub id, a folder or a .gguf path"
    picked = st.selectbox("Model", list(choices), format_func=choices.get, key="model", bind="query-params",
                          help="Bundled samples, SmolLM2-135M when its package is installed, models used before, "
                               "or any other reference.")
    if picked != OTHER:
        return picked
    ref = st.text_input("Model reference", key="model_ref", bind="query-params",
                        placeholder="HuggingFaceTB/SmolLM2-135M, ./my-model or model.gguf")
    return ref.strip()


def _device_picker() -> tuple[str, str]:
    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    left, right = st.columns(2)
    device = left.selectbox("Device", devices, key="device", **URL)
    dtype = right.selectbox("Dtype", DTYPE_OPTIONS, key="dtype", **URL)
    resolved = models.pick_device(device)
    torch_dtype = models.pick_dtype(resolved, dtype)
    st.caption(f"Runs on **{resolved}** in **{str(torch_dtype).replace('torch.', '')}**")
    return device, dtype


def _text_picker(model: str) -> tuple[str, str]:
    choices = sources.eval_text_choices()
    default = sources.default_text_for(model)
    picked = st.selectbox("Text", list(choices), format_func=choices.get, key="eval_text",
                          index=list(choices).index(default) if default in choices else 0,
                          help="Perplexity and top-1 accuracy are measured on this text.", **URL)
    if picked != sources.UPLOAD:
        return picked, choices[picked]
    uploaded = st.file_uploader("A .txt file", type=["txt"], key="eval_upload")
    if uploaded is None:
        st.caption("No file yet: the sample text is used until one is uploaded.")
        return "sample", choices["sample"]
    with shown("Cannot use the uploaded text"):  # not UTF-8, binary, empty: the refusal names what is wrong
        return str(sources.save_upload(uploaded.name, uploaded.getvalue())), f"uploaded {uploaded.name}"
    st.caption("The sample text is used until a UTF-8 text file is uploaded.")
    return "sample", choices["sample"]
