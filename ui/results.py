"""Stored results as tables for the Trade-offs page: one DataFrame row per result, Pareto frontier,
per-layer reports. Plain pandas, no Streamlit."""

from __future__ import annotations

import html
import math

import pandas as pd

from core.store import RESULT_FIELDS, ResultRow

# column -> (axis label, scale to the axis unit, lower is better)
AXES: dict[str, tuple[str, float, bool]] = {
    "size_bytes": ("size (MB)", 1e-6, True),
    "prefill_ms": ("prefill (ms)", 1.0, True),
    "decode_tok_s": ("decode (tokens/s)", 1.0, False),
}
METRIC_LABELS: dict[str, str] = {
    "perplexity": "perplexity", "base_perplexity": "base perplexity (same windows)", "top1_acc": "top-1 accuracy",
    "top1_agreement": "top-1 agreement with base", "kl_to_base": "KL(base‖model) per token", "params": "parameters",
    "nonzero_params": "non-zero parameters", "size_bytes": "size (bytes)", "bits_per_weight": "bits per weight",
    "prefill_ms": "prefill (ms)", "decode_tok_s": "decode (tokens/s)", "peak_mem_bytes": "peak memory (bytes)",
    "kernel": "kernel", "device": "device", "wall_s": "wall time (s)",
}


def results_frame(rows: list[ResultRow]) -> pd.DataFrame:
    """RESULT_FIELDS plus method, family, zeros, the evaluation protocol and the axis columns."""
    records = []
    for row in rows:
        details = row.details or {}
        record = {name: getattr(row, name) for name in RESULT_FIELDS}
        method = details.get("method") or "base"
        if isinstance(details.get("export"), dict):  # its size is the file's: a point apart from the in-memory run
            method = f"{method} → {details['export'].get('format', '?')} file"
        windows, seqlen = details.get("windows"), details.get("seqlen")
        record.update(
            method=method,
            family=method.split()[0],
            zeros=1 - row.nonzero_params / row.params if row.params and row.nonzero_params is not None else None,
            protocol=f"{details.get('text', '?')}, seqlen {seqlen}, {windows} windows",
            recipe_html=html.escape(row.recipe or "").replace("\n", "<br>"),
        )
        for column, (_, scale, _) in AXES.items():
            value = record[column]
            record[f"{column}_axis"] = value * scale if value is not None and math.isfinite(value) else None
        records.append(record)
    columns = [*RESULT_FIELDS, "method", "family", "zeros", "protocol", "recipe_html", *(f"{c}_axis" for c in AXES)]
    return pd.DataFrame.from_records(records, columns=columns)


def pareto_front(frame: pd.DataFrame, x: str, y: str, x_lower_better: bool = True) -> pd.DataFrame:
    """Rows no other row beats on both ``x`` and ``y`` (lower ``y`` is better), sorted along ``x``."""
    points = frame.dropna(subset=[x, y]).sort_values([x, y], ascending=[x_lower_better, True])
    best, keep = math.inf, []
    for index, value in points[y].items():
        if value < best:
            best = value
            keep.append(index)
    return points.loc[keep]


def layer_frame(row: ResultRow) -> pd.DataFrame | None:
    """The first step's per-layer report (name, sparsity, sqnr_db, rel_error), or None when it has none.

    Pruning reports fill ``sparsity``, quantization reports ``sqnr_db``; the other column is empty.
    """
    steps = (row.details or {}).get("steps") or []
    layers = steps[0].get("layers") if steps and isinstance(steps[0], dict) else None
    if not layers:
        return None
    return pd.DataFrame.from_records([{"name": layer["name"], "sparsity": layer.get("sparsity"),
                                       "sqnr_db": layer.get("sqnr_db"), "rel_error": layer.get("rel_error")}
                                      for layer in layers], columns=["name", "sparsity", "sqnr_db", "rel_error"])


def compare_table(a: ResultRow, b: ResultRow) -> pd.DataFrame:
    """The two results' metrics side by side, as text (a column can mix numbers and kernel names)."""
    table = {
        "model": [a.model, b.model],
        "method": [(a.details or {}).get("method", "base"), (b.details or {}).get("method", "base")],
        "evaluation": [_protocol(a), _protocol(b)],
    }
    for name, label in METRIC_LABELS.items():
        table[label] = [_show(getattr(a, name)), _show(getattr(b, name))]
    return pd.DataFrame.from_dict(table, orient="index", columns=[a.id, b.id])


def _protocol(row: ResultRow) -> str:
    details = row.details or {}
    return f"{details.get('text', '?')}, seqlen {details.get('seqlen')}, {details.get('windows')} windows"


def _show(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
