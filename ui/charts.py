"""Plotly figures for the pages. Pure functions: data in, figure out (no Streamlit here)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from ui.results import AXES, pareto_front

_MARGINS = {"l": 10, "r": 10, "t": 40, "b": 10}


def short_layer_name(name: str) -> str:
    """'model.layers.3.self_attn.q_proj' -> '3.self_attn.q_proj' (the block index and the module)."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[i:])
    return name


def magnitude_histogram(edges: list[float], counts: list[int], layer: str, log_y: bool = False) -> go.Figure:
    width = edges[1] - edges[0] if len(edges) > 1 else 1.0
    fig = go.Figure(go.Bar(x=[e + width / 2 for e in edges], y=counts, width=width, marker_line_width=0,
                           hovertemplate="|w| ≈ %{x:.4g}<br>%{y:,} weights<extra></extra>"))
    fig.update_layout(title=f"|w| of {short_layer_name(layer)}", xaxis_title="|w|", yaxis_title="weights",
                      bargap=0, margin=_MARGINS, height=320)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def layer_sparsity_bars(per_layer: dict[str, float], title: str) -> go.Figure:
    """One bar per layer: the fraction of its weights that would be zero."""
    names = [short_layer_name(n) for n in per_layer]
    fig = go.Figure(go.Bar(x=names, y=list(per_layer.values()),
                           hovertemplate="%{x}<br>%{y:.1%} zero<extra></extra>"))
    fig.update_layout(title=title, yaxis_tickformat=".0%", yaxis_range=[0, 1], margin=_MARGINS, height=340)
    return fig


def tradeoff_scatter(frame: pd.DataFrame, x: str, color: str, size: str | None, log_y: bool) -> go.Figure:
    """Perplexity against ``x`` (a key of AXES); base rows as diamonds, the Pareto frontier as a line."""
    label, _, lower_better = AXES[x]
    plotted = frame.assign(kind=frame["method"].map(lambda m: "base model" if m == "base" else "compressed"))
    size_column = None
    if size is not None:
        # Plotly needs a positive size for every point: rows without the metric get the smallest one.
        values = plotted[f"{size}_axis"]
        plotted["marker_size"] = values.fillna(values.min() if values.notna().any() else 1.0).clip(lower=1e-9)
        size_column = "marker_size"
    fig = px.scatter(
        plotted, x=f"{x}_axis", y="perplexity", color=color, symbol="kind", size=size_column, size_max=28,
        symbol_map={"base model": "diamond", "compressed": "circle"},
        custom_data=["id", "model", "method", "recipe_html"],
        labels={f"{x}_axis": label, "perplexity": "perplexity", color: color},
    )
    fig.update_traces(hovertemplate=("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{customdata[2]}<br>"
                                      f"{label}: %{{x:.4g}}<br>perplexity: %{{y:.4g}}<br><br>"
                                      "%{customdata[3]}<extra></extra>"))
    if size is None:
        fig.update_traces(marker_size=11)
    front = pareto_front(plotted, f"{x}_axis", "perplexity", lower_better)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front[f"{x}_axis"], y=front["perplexity"], mode="lines", name="Pareto frontier",
                                 line={"dash": "dot", "color": "grey"}, hoverinfo="skip"))
    fig.update_layout(margin=_MARGINS, height=520, legend_title_text="")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def compare_layer_bars(layers: dict[str, pd.DataFrame], value: str, title: str, percent: bool) -> go.Figure:
    """Grouped bars of one per-layer ``value`` column for each result in ``layers`` (label -> frame)."""
    fig = go.Figure()
    for label, frame in layers.items():
        fig.add_trace(go.Bar(name=label, x=[short_layer_name(n) for n in frame["name"]], y=frame[value]))
    fig.update_layout(title=title, barmode="group", margin=_MARGINS, height=360)
    if percent:
        fig.update_yaxes(tickformat=".0%")
    return fig
