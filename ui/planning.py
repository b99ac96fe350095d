"""The Plan page's glue: the atlas as a background job, one cached planner per atlas, its figures, and the
planned runs' predictions beside their measurements."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import yaml

from core import Atlas, AtlasRequest, Planner, Recipe, ResultRow, atlas_for, cached_atlas
from core.models import LoadedModel
from ui import jobs, state
from ui.charts import short_layer_name
from ui.errors import shown

_MARGINS = {"l": 10, "r": 10, "t": 40, "b": 10}


class _NotYet(Exception):
    """No atlas answers the request yet (raised, not returned, so that the miss is not cached)."""


@st.cache_resource(show_spinner=False, max_entries=16)
def _found_atlas(model_ref: str, request: AtlasRequest, root: str, _loaded: LoadedModel) -> Atlas:
    # keyed by the model reference: the app's cached base model of a reference never changes (ui.cache.load_base)
    atlas = cached_atlas(_loaded.model, _loaded.tokenizer, request, root)
    if atlas is None:
        raise _NotYet
    return atlas


def find_atlas(loaded: LoadedModel, request: AtlasRequest, root: str) -> Atlas | None:
    """The cached atlas answering ``request`` for the loaded model, or None (shown when unreadable). Once found it
    is kept in memory, so a rerun (each move of the budget slider) neither hashes the weights nor reads the file."""
    with shown("Cannot read the cached atlases"):
        try:
            return _found_atlas(loaded.source.ref, request, root, loaded)
        except _NotYet:
            return None
    return None


def submit_atlas(loaded: LoadedModel, request: AtlasRequest, root: str) -> str:
    """Build the atlas in the background worker and cache it under ``root`` (its own files beside the results,
    ``core.plan.cache``); the job keeps no result row: the page finds the atlas in the cache when it is done."""
    def task(on_progress, cancel, on_record) -> None:  # noqa: ANN001, ARG001 - the worker's callables
        atlas_for(loaded.model, loaded.tokenizer, loaded.source.default_calibration_text, request, root,
                  loaded.context_length, on_progress, cancel)

    label = f"{request.mode} atlas of {request.menu.method} ({', '.join(request.menu.labels)}) on {request.model}"
    recipe = Recipe(model=request.model, calibration=request.calibration)
    return jobs.worker().submit(recipe, loaded, label=label, page=state.current_page(), task=task)


@st.cache_resource(max_entries=8, show_spinner="Preparing the planner...")
def planner(key: str, mode: str, _atlas: Atlas) -> Planner:
    """One planner per (atlas, mode): its knapsack tables are built once, then every budget is a table walk."""
    found = Planner(_atlas, mode)
    found.table("nonzero" if _atlas.menu.technique == "prune" else "bytes")
    return found


@st.cache_resource(show_spinner=False, max_entries=64)
def cached_atlas_figure(key: str, mode: str, chosen: tuple[int, ...], _atlas: Atlas) -> go.Figure:
    """``atlas_figure`` of the atlas ``key``, kept per plan (a slider moved back draws from memory)."""
    return atlas_figure(_atlas, mode, list(chosen))


def atlas_figure(atlas: Atlas, mode: str, chosen: list[int] | None = None) -> go.Figure:
    """Layers (x) by options (y), colour = log10 of the cost; the chosen option of each layer circled."""
    costs = atlas.costs(mode)
    positive = costs[costs > 0]
    floor = float(positive.min()) if positive.size else 1e-12
    z = np.log10(np.maximum(costs, floor)).T
    names = [short_layer_name(layer.name) for layer in atlas.layers]
    unit = "KL per token (nats)" if mode == "measured" else "estimated Δ NLL per token"
    fig = go.Figure(go.Heatmap(z=z, x=names, y=atlas.menu.labels, colorscale="Viridis",
                               colorbar={"title": f"log10 {unit}"}, customdata=costs.T,
                               hovertemplate="%{x}<br>%{y}: %{customdata:.3g}<extra></extra>"))
    if chosen is not None:
        fig.add_trace(go.Scatter(x=names, y=[atlas.menu.labels[k] for k in chosen], mode="markers",
                                 marker={"symbol": "circle-open", "size": 9, "color": "white", "line": {"width": 2}},
                                 name="chosen", hoverinfo="skip"))
    fig.update_layout(title=f"Cost of each option on each layer ({unit}, log scale)", margin=_MARGINS, height=300,
                      showlegend=False, xaxis={"showticklabels": len(names) <= 60})
    return fig


def budget_range(plan_table: Planner, target: str) -> tuple[float, float]:
    """The slider's range: from the lightest choice to the heaviest, in the budget's unit."""
    sizes = plan_table.bytes if target != "sparsity" else plan_table.nonzero
    low, high = int(sizes.min(axis=1).sum()), int(sizes.max(axis=1).sum())
    if target == "avg_bits":
        return 8 * low / plan_table.numel, 8 * high / plan_table.numel
    if target == "size_mb":
        fixed = plan_table.atlas.fixed_bytes
        return (fixed + low) / 1e6, (fixed + high) / 1e6
    return 1 - high / plan_table.numel, 1 - low / plan_table.numel


def reachable_perplexity(plans: Planner) -> float:
    """The lowest perplexity the menu can predict: every layer at its cheapest option."""
    _, costs = plans.table("bytes").best_costs()
    return float(plans.atlas.base_perplexity * math.exp(plans.fit(float(costs[-1]))))


@st.cache_data(show_spinner=False, max_entries=8)
def cached_planned_runs(ids: tuple[str, ...], _rows: list[ResultRow]) -> pd.DataFrame:
    """``planned_runs`` of ``_rows``, the finished results ``ids`` (a finished row never changes)."""
    return planned_runs(_rows)


def planned_runs(rows: list[ResultRow]) -> pd.DataFrame:
    """Every finished run of a planned recipe: its predicted perplexity (the run's base x the planned ratio)
    beside the measured one."""
    records = []
    for row in rows:
        predicted = _prediction(row)
        if predicted is None or row.perplexity is None or not row.base_perplexity:
            continue
        records.append({"id": row.id, "model": row.model, "method": (row.details or {}).get("method", ""),
                        "predicted": row.base_perplexity * predicted["perplexity_ratio"],
                        "measured": row.perplexity, "size_mb": predicted["size_bytes"] / 1e6})
    return pd.DataFrame.from_records(records, columns=["id", "model", "method", "predicted", "measured", "size_mb"])


def _prediction(row: ResultRow) -> dict | None:
    try:
        steps = (yaml.safe_load(row.recipe or "") or {}).get("steps") or []
    except yaml.YAMLError:
        return None
    for step in steps:
        params = next(iter(step.values())) if isinstance(step, dict) and step else None
        if isinstance(params, dict) and isinstance(params.get("planned"), dict):
            return params["planned"].get("predicted")
    return None


def prediction_note(job: jobs.Job) -> None:
    """Inside a finished planned run's panel: the predicted perplexity beside the measured one."""
    if job.status != "done" or job.result_id is None:
        return
    with shown("Cannot read the result"):
        from ui.cache import store_at

        row = store_at(job.results_dir).get(job.result_id)
        predicted = _prediction(row)
        if predicted is None or row.perplexity is None or not row.base_perplexity:
            return
        guess = row.base_perplexity * predicted["perplexity_ratio"]
        error = (guess - row.perplexity) / row.perplexity
        st.markdown(f"**Predicted {guess:.3f}, measured {row.perplexity:.3f}** ({error:+.1%}); predicted size "
                    f"{predicted['size_bytes'] / 1e6:.3f} MB of weights as stored (the size above is the weights as "
                    "held in memory, with each layer's kernel).")


def prediction_figure(frame: pd.DataFrame) -> go.Figure:
    """Predicted against measured perplexity of the planned runs, with the line where they agree."""
    high = float(max(frame["predicted"].max(), frame["measured"].max())) * 1.05
    low = float(min(frame["predicted"].min(), frame["measured"].min())) * 0.95
    fig = go.Figure([go.Scatter(x=[low, high], y=[low, high], mode="lines", line={"dash": "dot", "color": "grey"},
                                hoverinfo="skip", name="predicted = measured"),
                     go.Scatter(x=frame["predicted"].tolist(), y=frame["measured"].tolist(), mode="markers",
                                text=frame["method"].tolist(), customdata=frame["id"].tolist(), name="planned runs",
                                hovertemplate="%{customdata}<br>%{text}<br>predicted %{x:.3f}<br>measured %{y:.3f}"
                                              "<extra></extra>")])
    fig.update_layout(title="Planned runs: predicted against measured perplexity", xaxis_title="predicted",
                      yaxis_title="measured", margin=_MARGINS, height=360, showlegend=False)
    return fig


def relative_error(frame: pd.DataFrame) -> float:
    """Largest |predicted - measured| / measured over the planned runs (nan when there are none)."""
    if frame.empty:
        return math.nan
    return float(((frame["predicted"] - frame["measured"]).abs() / frame["measured"]).max())
