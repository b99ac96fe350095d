"""Plotly figures of a sweep: its Pareto front and a parallel-coordinates view. Pure: a frame in, a figure out.

The frame is ``ui.sweeps.trials_frame``: one row per finished trial with ``id``, ``label``, ``perplexity``,
``ci_low`` / ``ci_high``, ``size_mb``, ``pareto``, ``acceptable``, ``best`` and one column per swept parameter.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

_MARGINS = {"l": 10, "r": 10, "t": 40, "b": 10}
_FRONT, _OTHER, _ACCEPTABLE, _BEST, _BASE = "#1f77b4", "#b0b0b0", "#2ca02c", "#d62728", "#555555"


def _points(frame: pd.DataFrame, name: str, color: str, symbol: str = "circle", size: int = 10,
            hollow: bool = False) -> go.Scatter:
    """One trace of trials; hover shows the id and the parameters, error bars the perplexity's interval."""
    has_ci = frame["ci_low"].notna().any() and frame["ci_high"].notna().any()
    error_y = None
    if has_ci:
        error_y = {"type": "data", "symmetric": False, "array": (frame["ci_high"] - frame["perplexity"]).tolist(),
                   "arrayminus": (frame["perplexity"] - frame["ci_low"]).tolist(), "thickness": 1, "width": 3}
    marker = {"color": "white" if hollow else color, "symbol": symbol, "size": size,
              "line": {"color": color, "width": 2}}
    return go.Scatter(x=frame["size_mb"].tolist(), y=frame["perplexity"].tolist(), mode="markers", name=name,
                      marker=marker, error_y=error_y, customdata=frame[["id", "label"]].values.tolist(),
                      hovertemplate="<b>%{customdata[0]}</b><br>%{customdata[1]}<br>size %{x:.3f} MB<br>"
                                    "perplexity %{y:.4g}<extra></extra>")


def pareto_figure(frame: pd.DataFrame, base_perplexity: float | None = None, base_size_mb: float | None = None,
                  bound: float | None = None, title: str = "Perplexity against size") -> go.Figure:
    """The trials as perplexity against size: the Pareto front joined, acceptable ones green, the best starred,
    the base model's perplexity as a line and the constraint's band above it."""
    fig = go.Figure()
    if base_perplexity is not None and bound is not None and bound > base_perplexity:
        fig.add_hrect(y0=base_perplexity, y1=bound, fillcolor=_ACCEPTABLE, opacity=0.08, line_width=0,
                      annotation_text="acceptable", annotation_position="top left")
    if base_perplexity is not None:
        fig.add_hline(y=base_perplexity, line={"dash": "dash", "color": _BASE, "width": 1},
                      annotation_text=f"base {base_perplexity:.4g}", annotation_position="bottom right")
    if base_size_mb is not None and base_perplexity is not None:
        fig.add_trace(go.Scatter(x=[base_size_mb], y=[base_perplexity], mode="markers", name="base model",
                                 marker={"symbol": "diamond", "size": 12, "color": _BASE},
                                 hovertemplate="base model<br>size %{x:.3f} MB<br>perplexity %{y:.4g}<extra></extra>"))
    others = frame[~frame["pareto"]]
    for part, name, color in ((others[~others["acceptable"]], "other trials", _OTHER),
                              (others[others["acceptable"]], "acceptable", _ACCEPTABLE)):
        if len(part):
            fig.add_trace(_points(part, name, color, hollow=True))
    front = frame[frame["pareto"]].sort_values("size_mb")
    if len(front):
        fig.add_trace(_points(front, "Pareto front", _FRONT))
        fig.add_trace(go.Scatter(x=front["size_mb"].tolist(), y=front["perplexity"].tolist(), mode="lines",
                                 line={"dash": "dot", "color": _FRONT}, hoverinfo="skip", showlegend=False))
    best = frame[frame["best"]]
    if len(best):
        fig.add_trace(_points(best, "best acceptable", _BEST, symbol="star", size=18))
    fig.update_layout(title=title, xaxis_title="size (MB)", yaxis_title="perplexity", margin=_MARGINS, height=480,
                      legend_title_text="")
    return fig


def _dimension(series: pd.Series, label: str) -> dict:
    """A parallel-coordinates axis: numbers as they are, anything else as evenly spaced named ticks."""
    numeric = pd.to_numeric(series, errors="coerce")
    if numeric.notna().all():
        return {"label": label, "values": numeric.tolist()}
    names = sorted({str(v) for v in series})
    codes = {name: i for i, name in enumerate(names)}
    return {"label": label, "values": [codes[str(v)] for v in series], "tickvals": list(codes.values()),
            "ticktext": names}


def parallel_figure(frame: pd.DataFrame, params: dict[str, str], objectives: dict[str, str]) -> go.Figure:
    """One line per finished trial across its parameters (``params``: column -> label) and its objectives
    (``objectives``: column -> label), coloured by perplexity (darker is better)."""
    dimensions = [_dimension(frame[column], label) for column, label in params.items()]
    dimensions += [{"label": label, "values": frame[column].tolist()} for column, label in objectives.items()]
    line = {"color": frame["perplexity"].tolist(), "colorscale": "Viridis_r", "showscale": True,
            "colorbar": {"title": {"text": "perplexity"}}}
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line))
    fig.update_layout(title="Parameters against objectives", margin={"l": 60, "r": 60, "t": 70, "b": 20}, height=420)
    return fig
