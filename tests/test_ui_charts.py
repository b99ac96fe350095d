"""The Trade-offs scatter: every result is a point, base models are diamonds, the frontier is drawn."""

from __future__ import annotations

import pandas as pd

from ui import charts


def frame() -> pd.DataFrame:
    """Four results as ``ui.results.results_frame`` lays them out (only the columns the chart reads)."""
    return pd.DataFrame({
        "id": ["base-1", "mag-50", "mag-70", "gptq-4"],
        "model": ["sample:teacher"] * 4,
        "method": ["base", "magnitude 50%", "magnitude 70%", "gptq w4"],
        "family": ["base", "magnitude", "magnitude", "gptq"],
        "recipe_html": ["model: sample:teacher"] * 4,
        "perplexity": [90.0, 95.0, 130.0, 92.0],
        "size_bytes_axis": [12.0, 12.0, 12.0, 3.5],
        "decode_tok_s_axis": [100.0, None, 80.0, 60.0],
    })


def test_every_result_is_a_point_and_base_models_are_diamonds() -> None:
    fig = charts.tradeoff_scatter(frame(), "size_bytes", "family", None, log_y=False)
    points = {row[0]: (trace.name, trace.marker.symbol, x, y) for trace in fig.data if trace.mode == "markers"
              for row, x, y in zip(trace.customdata, trace.x, trace.y, strict=True)}
    assert points == {
        "base-1": ("base (base model)", "diamond", 12.0, 90.0),
        "mag-50": ("magnitude", "circle", 12.0, 95.0),
        "mag-70": ("magnitude", "circle", 12.0, 130.0),
        "gptq-4": ("gptq", "circle", 3.5, 92.0),
    }
    frontier = next(trace for trace in fig.data if trace.name == "Pareto frontier")
    assert list(frontier.x) == [3.5, 12.0] and list(frontier.y) == [92.0, 90.0]
    assert fig.layout.xaxis.title.text == "size (MB)" and fig.layout.yaxis.title.text == "perplexity"


def test_marker_sizes_are_positive_even_where_the_metric_is_missing() -> None:
    fig = charts.tradeoff_scatter(frame(), "size_bytes", "method", "decode_tok_s", log_y=True)
    sizes = [size for trace in fig.data if trace.mode == "markers" for size in trace.marker.size]
    assert len(sizes) == 4 and min(sizes) > 0 and max(sizes) == 100.0
    assert fig.layout.yaxis.type == "log"
    assert len({trace.marker.color for trace in fig.data if trace.mode == "markers"}) == 4  # one colour per method


def test_an_exported_result_is_labelled_by_its_file_format() -> None:
    from core.store import ResultRow
    from ui.results import results_frame

    run = {"model": "sample:teacher", "recipe": "model: sample:teacher", "perplexity": 95.0, "status": "ok"}
    rows = [ResultRow(id="run", created="2026-01-01T00:00:00.000000", size_bytes=12_000_000,
                      details={"method": "magnitude 50%"}, **run),
            ResultRow(id="file", created="2026-01-01T00:00:01.000000", size_bytes=8_000_000,
                      details={"method": "magnitude 50%", "export": {"format": "hf"}}, **run)]
    frame = results_frame(rows).set_index("id")
    assert frame.loc["run", "method"] == "magnitude 50%"
    assert frame.loc["file", "method"] == "magnitude 50% → hf file"  # its size is the file's, not the tensors'
    assert frame.loc["file", "family"] == "magnitude"
    assert frame.loc["file", "size_bytes_axis"] == 8.0
