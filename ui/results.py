"""Stored results as tables and phrases for the pages: one DataFrame row per result, Pareto frontier,
per-layer reports, and each figure with how sure it is (interval, verdict against the base, spread of
the timed runs). Plain pandas, no Streamlit."""

from __future__ import annotations

import html
import math

import pandas as pd

from core.evaluate import paired_comparison, report
from core.store import RESULT_FIELDS, ResultRow

PPL_DIGITS = 3  # perplexity decimals on the dashboard

# column -> (axis label, scale to the axis unit, lower is better)
AXES: dict[str, tuple[str, float, bool]] = {
    "size_bytes": ("size (MB)", 1e-6, True),
    "prefill_ms": ("prefill (ms)", 1.0, True),
    "decode_tok_s": ("decode (tokens/s)", 1.0, False),
}
SPEED_AXES = ("prefill_ms", "decode_tok_s")  # axes with a spread of timed runs (min / max)
METRIC_LABELS: dict[str, str] = {
    "perplexity": "perplexity", "perplexity_ci_low": "perplexity 95% CI, low",
    "perplexity_ci_high": "perplexity 95% CI, high", "base_perplexity": "base perplexity (same windows)",
    "top1_acc": "top-1 accuracy",
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
            vs_base=vs_base_cell(details),
            delta_to_base=delta_to_base(row),
            sweep=row.sweep,
        )
        for column, (_, scale, _) in AXES.items():
            value = record[column]
            record[f"{column}_axis"] = value * scale if value is not None and math.isfinite(value) else None
        record.update(_speed_spread(details.get("latency") or {}))
        records.append(record)
    columns = [*RESULT_FIELDS, "method", "family", "zeros", "protocol", "recipe_html", "vs_base", "delta_to_base",
               "sweep",
               *(f"{c}_axis" for c in AXES), *(f"{c}_{end}_axis" for c in SPEED_AXES for end in ("min", "max"))]
    return pd.DataFrame.from_records(records, columns=columns)


def _speed_spread(latency: dict) -> dict[str, float | None]:
    """The fastest and slowest timed run of each speed axis, in the axis unit (None for rows without them)."""
    spread = {}
    for column in SPEED_AXES:
        scale = AXES[column][1]
        for end in ("min", "max"):
            value = latency.get(f"{column}_{end}")
            spread[f"{column}_{end}_axis"] = value * scale if value is not None and math.isfinite(value) else None
    return spread


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


def compare_table(*rows: ResultRow) -> pd.DataFrame:
    """The results' metrics side by side, one column each, as text (a column can mix numbers and kernel names)."""
    table = {
        "model": [row.model for row in rows],
        "method": [(row.details or {}).get("method", "base") for row in rows],
        "evaluation": [_protocol(row) for row in rows],
    }
    for name, label in METRIC_LABELS.items():
        table[label] = [_show(getattr(row, name)) for row in rows]
    table["Δ perplexity to its base"] = [_show(_percent(delta_to_base(row))) for row in rows]
    table["vs its base (paired)"] = [_show(vs_base_cell(row.details)) for row in rows]
    for name, label in (("prefill_ms", "prefill runs"), ("decode_tok_s", "decode runs")):
        table[label] = [_spread(row, name) for row in rows]
    return pd.DataFrame.from_dict(table, orient="index", columns=[row.id for row in rows])


def delta_to_base(row: ResultRow) -> float | None:
    """Perplexity relative to its base model on the same windows, minus one (0.05: 5% worse); None without one."""
    if row.perplexity is None or not row.base_perplexity:
        return None
    return row.perplexity / row.base_perplexity - 1


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:+.2f}%"


# ---- the question users ask: the smallest result within a tolerance of the base --------------------


def base_reference(frame: pd.DataFrame) -> float | None:
    """The base perplexity the results shown compare with: one model on one evaluation, else None (no line).

    A measured base row (method "base") wins; otherwise the base perplexity the compressed runs measured on
    the same windows (they agree: the same base model scored on the same windows)."""
    if frame.empty or frame["model"].nunique() != 1 or frame["protocol"].nunique() != 1:
        return None
    base_rows = frame[frame["method"] == "base"]["perplexity"].dropna()
    if not base_rows.empty:
        return float(base_rows.iloc[0])
    measured = frame["base_perplexity"].dropna()
    return float(measured.median()) if not measured.empty else None


def smallest_within(frame: pd.DataFrame, base: float, tolerance: float, x: str) -> str | None:
    """The id of the best result on axis ``x`` (a key of AXES) with perplexity at most ``base * (1 + tolerance)``."""
    _, _, lower_better = AXES[x]
    inside = frame[(frame["perplexity"] <= base * (1 + tolerance)) & (frame["method"] != "base")]
    inside = inside.dropna(subset=[f"{x}_axis"])
    if inside.empty:
        return None
    order = inside.sort_values([f"{x}_axis", "perplexity"], ascending=[lower_better, True])
    return str(order["id"].iloc[0])


def _protocol(row: ResultRow) -> str:
    details = row.details or {}
    return f"{details.get('text', '?')}, seqlen {details.get('seqlen')}, {details.get('windows')} windows"


def _spread(row: ResultRow, name: str) -> str:
    latency = (row.details or {}).get("latency") or {}
    return report.spread_text(latency, name) if latency else "n/a"


def _show(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# ---- each figure with how sure it is -----------------------------------------------------------


def vs_base_cell(details: dict) -> str | None:
    """'+3.02% (worse)', '+0.01% (within noise)' for a table cell; None without a paired comparison."""
    vs_base = (details or {}).get("vs_base")
    if not vs_base:
        return None
    return f"{100 * (vs_base['ratio'] - 1):+.2f}% ({vs_base['verdict']})"


def baseline_row(model: str, measured: dict) -> ResultRow:
    """A measured baseline (``Measurement.row_fields()`` merged with its ``details()``) as an unsaved result row,
    so the Model page says its figures the way a result panel does."""
    fields = {name: measured.get(name) for name in ("perplexity", "perplexity_ci_low", "perplexity_ci_high",
                                                    "top1_acc", "prefill_ms", "decode_tok_s", "peak_mem_bytes")}
    return ResultRow(id="baseline", created="", model=model, recipe="", status="ok", details=measured, **fields)


def perplexity_value(row: ResultRow) -> str:
    """'92.5 ± 12.0': the half-width of the 95% interval over windows to three significant digits, and the
    perplexity to the same decimals (no digits the interval says are noise); the bare figure without one."""
    if row.perplexity is None:
        return "n/a"
    low, high = row.perplexity_ci_low, row.perplexity_ci_high
    if low is None or high is None or not high > low:
        return report.plus_minus(row.perplexity, None, None, PPL_DIGITS)
    digits = max(0, min(PPL_DIGITS, 2 - math.floor(math.log10((high - low) / 2))))
    return report.plus_minus(row.perplexity, low, high, digits)


def perplexity_delta(row: ResultRow) -> dict:
    """``st.metric`` delta arguments against the base: an arrow only for a real (paired) difference.

    Within noise (or one window, no interval) the delta says so in grey, without an arrow.
    """
    details = row.details or {}
    if row.perplexity is None or not row.base_perplexity or not details.get("vs_base"):
        return {"delta": None}
    difference = f"{row.perplexity - row.base_perplexity:+.{PPL_DIGITS}f} vs base {row.base_perplexity:.{PPL_DIGITS}f}"
    if report.shows_change(details):
        return {"delta": f"{difference} ({report.verdict(details)})", "delta_color": "inverse"}
    label = "within noise" if report.verdict(details) == "within noise" else "no interval (one window)"
    return {"delta": f"{label}: {difference}", "delta_color": "off", "delta_arrow": "off"}


def interval_caption(row: ResultRow) -> str:
    """The interval with its protocol, the base's on the same windows, and the paired comparison."""
    details = row.details or {}
    parts = [f"Perplexity {report.interval_text(row.perplexity_ci_low, row.perplexity_ci_high, details, PPL_DIGITS)}"
             f" ({details.get('text', '?')})"]
    base = details.get("base_perplexity_interval")
    if base and row.base_perplexity is not None:
        parts.append(f"base {report.plus_minus(row.base_perplexity, base.get('low'), base.get('high'), PPL_DIGITS)}"
                     " on the same windows")
    compared = report.vs_base_text(details.get("vs_base"))
    if compared:
        parts.append(compared)
    return " · ".join(parts)


def speed_caption(row: ResultRow) -> str | None:
    """'prefill 16.6 ms (min 13.9, max 23.8, 5 runs) · decode 242.1 tokens/s (...) · 0.90× the base (paired...)'."""
    latency = (row.details or {}).get("latency") or {}
    if row.prefill_ms is None or not latency:
        return None
    parts = [f"prefill {row.prefill_ms:.1f} ms ({report.spread_text(latency, 'prefill_ms')})",
             f"decode {row.decode_tok_s:.1f} tokens/s ({report.spread_text(latency, 'decode_tok_s')})"]
    compared = report.speed_vs_base_text(latency)
    if compared:
        parts.append(f"decode {compared}")
    parts.append(f"batch 1, {latency.get('threads')} threads on {latency.get('device')}")
    return " · ".join(parts)


def loop_caption(row: ResultRow) -> str | None:
    """'Timed with prefill: transformers forward; decode: ... (why faster steps did not run: ...)'."""
    latency = (row.details or {}).get("latency") or {}
    loop = report.loop_text(latency)
    if loop is None:
        return None
    why = report.loop_notes(latency)
    return f"Timed with {loop}" + (f". Why not a faster step: {'; '.join(why)}" if why else "")


def notes(row: ResultRow) -> list[str]:
    """A rough or missing interval, a busy machine while timing: what to read before trusting the figures."""
    return report.notes(row.details or {})


def paired_between(a: ResultRow, b: ResultRow) -> str | None:
    """B against A, window by window, when both were scored on the same windows (same model and protocol)."""
    first, second = a.details or {}, b.details or {}
    same = a.model == b.model and _protocol(a) == _protocol(b)
    if not same or a.id == b.id:
        return None
    counts = first.get("window_tokens")
    if not counts or counts != second.get("window_tokens") or not first.get("window_nll") or \
            len(first["window_nll"]) != len(second.get("window_nll") or ()):
        return None
    sums_a = [nll * n for nll, n in zip(first["window_nll"], counts, strict=True)]
    sums_b = [nll * n for nll, n in zip(second["window_nll"], counts, strict=True)]
    compared = paired_comparison(sums_b, sums_a, counts).as_dict()
    return f"{b.id} against {a.id} on the same {len(counts)} windows: {report.vs_base_text(compared, a.id)}"
