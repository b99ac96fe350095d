"""Plotly figures for the pages. Pure functions: data in, figure out (no Streamlit here)."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ui.results import AXES, pareto_front

_PALETTE = qualitative.Plotly  # the colours plotly express would pick, in order
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


def tradeoff_scatter(frame: pd.DataFrame, x: str, color: str, size: str | None, log_y: bool,
                     base_line: float | None = None, tolerance: float | None = None,
                     best: str | None = None) -> go.Figure:
    """Perplexity against ``x`` (a key of AXES); base rows as diamonds, the Pareto frontier as a line.

    Each point carries its perplexity's 95% interval over the evaluation windows as a vertical error bar
    (asymmetric: the interval is exp of the mean-NLL interval) and, on a speed axis, the range of its timed
    runs as a horizontal one; a result without them has no bar.
    One trace per (``color`` value, base or compressed). Built from plain lists with graph_objects:
    plotly express (and pandas slicing per trace) took ~10x longer, paid on every rerun of the page."""
    label, _, lower_better = AXES[x]
    x_column = f"{x}_axis"
    # dict.fromkeys: ``color`` may name a column already listed ("method")
    wanted = dict.fromkeys([x_column, "perplexity", "id", "model", "method", "recipe_html", color])
    columns = frame[list(wanted)].to_dict("list")
    above, below = _error_bars(frame, "perplexity", "perplexity_ci_low", "perplexity_ci_high")
    right, left = _error_bars(frame, x_column, f"{x}_min_axis", f"{x}_max_axis")
    sizes = _marker_sizes(frame, size)
    traces: dict[tuple[object, bool], list[int]] = {}  # (colour group, is base) -> row positions, in order
    for position, (group, method) in enumerate(zip(columns[color], columns["method"], strict=True)):
        traces.setdefault((group, method == "base"), []).append(position)
    colours = {group: _PALETTE[i % len(_PALETTE)] for i, group in enumerate(dict.fromkeys(columns[color]))}
    hover = ("<b>%{customdata[0]}</b><br>%{customdata[1]}<br>%{customdata[2]}<br>"
             f"{label}: %{{x:.4g}}<br>perplexity: %{{y:.4g}} %{{customdata[4]}}<br><br>%{{customdata[3]}}"
             "<extra></extra>")
    intervals = [_interval_label(columns["perplexity"][p], above[p], below[p]) for p in range(len(above))]
    fig = go.Figure()
    for (group, base), positions in sorted(traces.items(), key=lambda item: item[0][1]):  # compressed first
        marker = {"symbol": "diamond" if base else "circle", "color": colours[group], "size": 11}
        if sizes is not None:  # area-proportional, the largest 28 px across (as plotly express's size_max)
            marker.update(size=[sizes[p] for p in positions], sizemode="area", sizeref=2 * max(sizes) / 28**2)
        fig.add_trace(go.Scatter(
            x=[columns[x_column][p] for p in positions], y=[columns["perplexity"][p] for p in positions],
            customdata=[[*(columns[c][p] for c in ("id", "model", "method", "recipe_html")), intervals[p]]
                        for p in positions],
            error_y={"type": "data", "symmetric": False, "array": [above[p] for p in positions],
                     "arrayminus": [below[p] for p in positions], "thickness": 1.2, "width": 4},
            error_x={"type": "data", "symmetric": False, "array": [right[p] for p in positions],
                     "arrayminus": [left[p] for p in positions], "thickness": 1.2, "width": 4,
                     "visible": any(v is not None for v in right)},
            mode="markers", marker=marker, hovertemplate=hover, legendgroup=str(group),
            name=f"{group} (base model)" if base else str(group)))
    front = pareto_front(frame, x_column, "perplexity", lower_better)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=front[x_column].tolist(), y=front["perplexity"].tolist(), mode="lines",
                                 name="Pareto frontier", line={"dash": "dot", "color": "grey"}, hoverinfo="skip"))
    fig.update_layout(margin=_MARGINS, height=520, legend_title_text="", xaxis_title=label, yaxis_title="perplexity")
    if log_y:
        fig.update_yaxes(type="log")
    if base_line is not None:
        _base_band(fig, base_line, tolerance)
    if best is not None and best in columns["id"]:
        position = columns["id"].index(best)
        fig.add_trace(go.Scatter(x=[columns[x_column][position]], y=[columns["perplexity"][position]],
                                 mode="markers", name="smallest within the tolerance" if x == "size_bytes"
                                 else "best within the tolerance", hoverinfo="skip",
                                 marker={"symbol": "star-open", "size": 22, "color": "black", "line": {"width": 2}}))
    return fig


def _base_band(fig: go.Figure, base: float, tolerance: float | None) -> None:
    """A line at the base model's perplexity and, with a tolerance, the band of acceptable results above it."""
    fig.add_hline(y=base, line={"color": "black", "width": 1}, annotation_text=f"base {base:.4g}",
                  annotation_position="bottom right")
    if tolerance:
        fig.add_hrect(y0=base, y1=base * (1 + tolerance), fillcolor="green", opacity=0.08, line_width=0,
                      annotation_text=f"within +{tolerance:.0%}", annotation_position="top right")


def _error_bars(frame: pd.DataFrame, column: str, low_column: str,
                high_column: str) -> tuple[list[float | None], list[float | None]]:
    """Distances from each value up to ``high_column`` and down to ``low_column`` (None where either is missing).

    Perplexity: its 95% interval; a speed axis: the slowest and fastest timed run (decode's fastest run is its
    ``max``, prefill's its ``min``: either way the bar spans the runs)."""
    if low_column not in frame or high_column not in frame:
        return [None] * len(frame), [None] * len(frame)
    above, below = [], []
    for value, low, high in zip(frame[column], frame[low_column], frame[high_column], strict=True):
        known = all(v is not None and math.isfinite(v) for v in (value, low, high))
        above.append(high - value if known else None)
        below.append(value - low if known else None)
    return above, below


def _interval_label(value: float, above: float | None, below: float | None) -> str:
    """'(95% CI 81.3–105.3)' for the hover, or '(no interval)'."""
    if above is None or below is None:
        return "(no interval)"
    return f"(95% CI {value - below:.4g}–{value + above:.4g})"


def _marker_sizes(frame: pd.DataFrame, size: str | None) -> list[float] | None:
    """Plotly needs a positive size for every point: rows without the metric get the smallest one."""
    if size is None:
        return None
    values = frame[f"{size}_axis"]
    return values.fillna(values.min() if values.notna().any() else 1.0).clip(lower=1e-9).tolist()


def compare_layer_bars(layers: dict[str, pd.DataFrame], value: str, title: str, percent: bool) -> go.Figure:
    """Grouped bars of one per-layer ``value`` column for each result in ``layers`` (label -> frame)."""
    fig = go.Figure()
    for label, frame in layers.items():
        fig.add_trace(go.Bar(name=label, x=[short_layer_name(n) for n in frame["name"]], y=frame[value]))
    fig.update_layout(title=title, barmode="group", margin=_MARGINS, height=360)
    if percent:
        fig.update_yaxes(tickformat=".0%")
    return fig
