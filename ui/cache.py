"""Cached loaders: the base model (shared, read-only), its baseline figures, the threshold preview, figures.

``load_base`` returns one ``LoadedModel`` per (reference, device, dtype, opt-ins) for every session and the
background worker. Nobody mutates it: jobs run ``core.recipe.pipeline.run(recipe, store, base=loaded)``,
which deep-copies before any step, and the pages only read weights or run forward passes.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core import EvalSpec, ThresholdPreview, measure, measure_size, models
from core.errors import UnsafeModelError
from core.store import ResultStore, default_results_dir
from ui import charts, modelinfo
from ui.errors import shown
from ui.state import Selection
from ui.state import selection as sidebar_selection


@st.cache_resource(show_spinner="Loading the model...", max_entries=3)
def load_base(ref: str, device: str = "auto", dtype: str = "auto", allow_pickle: bool = False,
              trust_remote_code: bool = False) -> models.LoadedModel:
    """The model behind ``ref`` in eval mode, loaded once per process and per opt-in; treat it as read-only."""
    return models.load(ref, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)


def get_base(selection: Selection) -> models.LoadedModel | None:
    """The selected base model, or None after showing why it could not be loaded."""
    if not selection.model:
        st.info("Type a model reference in the sidebar: a Hub id (org/name), a local folder or a .gguf path.")
        return None
    with shown(f"Cannot load model {selection.model!r}"):
        try:
            return load_base(selection.model, selection.device, selection.dtype, **selection.load_options)
        except UnsafeModelError:
            st.info("If you trust this model, tick the matching opt-in in the sidebar, under *Opt-ins: code from "
                    "the model* (*Allow pickle weights* or *Trust remote code*).")
            raise
    return None


def _selected_base(ref: str, device: str, dtype: str) -> models.LoadedModel:
    """``load_base`` with the sidebar's opt-ins when ``ref`` is the sidebar's model (the figures derived from
    it are the same whichever opt-in loaded it; the opt-ins only decide whether it may be loaded)."""
    chosen = sidebar_selection()
    return load_base(ref, device, dtype, **(chosen.load_options if chosen.model == ref else {}))


@st.cache_resource(show_spinner="Sorting weight magnitudes...", max_entries=3)
def threshold_preview(ref: str, device: str = "auto", dtype: str = "auto") -> ThresholdPreview:
    """Sorted |w| of every block linear layer of the base model: sparsity at any threshold, instantly."""
    return ThresholdPreview.from_model(_selected_base(ref, device, dtype).model)


@st.cache_data(show_spinner=False, max_entries=8)
def model_summary(ref: str, device: str = "auto", dtype: str = "auto") -> dict[str, Any]:
    """Architecture, parameter counts and stored size of the base model."""
    loaded = _selected_base(ref, device, dtype)
    size = measure_size(loaded.model)
    return {
        **modelinfo.architecture(loaded.model),
        "context": loaded.context_length,
        "params": size.params,
        "nonzero_params": size.nonzero_params,
        "size_bytes": size.size_bytes,
        "bits_per_weight": size.bits_per_weight,
        "device": str(loaded.device),
        "dtype": str(loaded.dtype).replace("torch.", ""),
    }


@st.cache_data(show_spinner=False, max_entries=8)
def layer_rows(ref: str, device: str = "auto", dtype: str = "auto") -> list[dict[str, Any]]:
    return modelinfo.layer_rows(_selected_base(ref, device, dtype).model)


@st.cache_data(show_spinner=False, max_entries=32)
def magnitude_histogram(ref: str, device: str, dtype: str, layer: str) -> tuple[list[float], list[int]]:
    return modelinfo.magnitude_histogram(_selected_base(ref, device, dtype).model, layer)


@st.cache_data(show_spinner="Measuring the base model...", max_entries=16)
def baseline_metrics(ref: str, text: str, seqlen: int | None, max_windows: int | None, device: str = "auto",
                     dtype: str = "auto", latency: bool = False) -> dict[str, Any]:
    """Perplexity, top-1 accuracy, size (and speed when ``latency``) of the base model, measured once."""
    loaded = _selected_base(ref, device, dtype)
    spec = EvalSpec(text=text, seqlen=seqlen, max_windows=max_windows, latency=latency, compare_to_base=False)
    measured = measure(loaded.model, loaded, spec)
    return {**measured.row_fields(), **measured.details()}


@st.cache_resource
def store_at(root: str) -> ResultStore:
    """The history for the pages to read: read-only, so showing it writes nothing (runs write through the worker)."""
    return ResultStore(root, read_only=True)


def results_store() -> ResultStore:
    """The results history (``$SQUEEZELAB_RESULTS_DIR`` or ~/.squeezelab/results), opened once per folder."""
    return store_at(str(default_results_dir()))


@st.cache_data(ttl=10, show_spinner=False)
def recent_models(root: str) -> list[str]:
    """Distinct model references in the history, most recently used first."""
    seen: dict[str, None] = {}
    for row in store_at(root).list():
        seen.setdefault(row.model, None)
    return list(seen)


# Plotly figures: building one (validating every property) is the slowest step of a page that draws
# them, ~10-70 ms each on two cores, paid again on every rerun. They are cached as resources, not data:
# cache_data would unpickle a copy on every hit, which costs more than building it. Shared by every
# session and read-only: st.plotly_chart only serializes the figure it is given (to_dict, to_json).
# The key is the result ids (a finished result row is written once and never changes) and the options;
# the frame itself is not hashed (the leading underscore), which would cost a good part of the saving.


@st.cache_resource(show_spinner=False, max_entries=16)
def tradeoff_figure(ids: tuple[str, ...], x: str, color: str, size: str | None, log_y: bool,
                    _frame: pd.DataFrame, base: float | None = None, tolerance: float | None = None,
                    best: str | None = None) -> go.Figure:
    """``charts.tradeoff_scatter`` of ``_frame``, whose rows are the finished results ``ids``."""
    return charts.tradeoff_scatter(_frame, x, color, size, log_y, base, tolerance, best)


@st.cache_resource(show_spinner=False, max_entries=32)
def layer_bars_figure(ids: tuple[str, ...], value: str, title: str, percent: bool,
                      _layers: dict[str, pd.DataFrame]) -> go.Figure:
    """``charts.compare_layer_bars`` of ``_layers``, the per-layer reports of the finished results ``ids``."""
    return charts.compare_layer_bars(_layers, value, title, percent)
