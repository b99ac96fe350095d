"""Trade-offs: every stored result on a chart, in a table, side by side, with the recipe behind it."""

import pandas as pd
import streamlit as st

from core import ResultRow
from ui import cache, jobs, navigation, results
from ui.errors import shown

navigation.inside_app()

TABLE_COLUMNS = ["method", "id", "created", "model", "sweep", "perplexity", "perplexity_ci_low", "perplexity_ci_high",
                 "base_perplexity", "delta_to_base", "vs_base", "top1_acc", "top1_agreement", "kl_to_base", "zeros",
                 "size_bytes_axis",
                 "bits_per_weight", "prefill_ms", "decode_tok_s",
                 "kernel", "device", "protocol", "wall_s"]
COLUMN_CONFIG = {
    "method": st.column_config.TextColumn("result", pinned=True, help="What was done (the recipe's steps)"),
    "delta_to_base": st.column_config.NumberColumn("Δ to base", format="percent",
                                                   help="Perplexity relative to the base model on the same windows"),
    "perplexity": st.column_config.NumberColumn(format="%.3f"),
    "perplexity_ci_low": st.column_config.NumberColumn("95% CI low", format="%.3f",
                                                       help="95% interval of the perplexity over the windows"),
    "perplexity_ci_high": st.column_config.NumberColumn("95% CI high", format="%.3f"),
    "vs_base": st.column_config.TextColumn("vs base (paired)", help="Perplexity change against the base model on "
                                           "the same windows; 'within noise' when its paired 95% interval holds 0"),
    "base_perplexity": st.column_config.NumberColumn("base ppl", format="%.3f"),
    "top1_acc": st.column_config.NumberColumn("top-1", format="percent"),
    "top1_agreement": st.column_config.NumberColumn("agree", format="percent"),
    "kl_to_base": st.column_config.NumberColumn("KL", format="%.4f"),
    "zeros": st.column_config.NumberColumn(format="percent"),
    "size_bytes_axis": st.column_config.NumberColumn("size (MB)", format="%.2f"),
    "bits_per_weight": st.column_config.NumberColumn("bits/w", format="%.1f"),
    "prefill_ms": st.column_config.NumberColumn("prefill ms", format="%.1f"),
    "decode_tok_s": st.column_config.NumberColumn("decode tok/s", format="%.1f"),
    "wall_s": st.column_config.NumberColumn("wall s", format="%.1f"),
}


ALL_RESULTS = "every result"


def filtered(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the sweep, models and evaluation protocols the user keeps."""
    sweeps = sorted(name for name in frame["sweep"].dropna().unique())
    left, middle, right = st.columns([1, 2, 2])
    picked = left.selectbox("Sweep", [ALL_RESULTS, *sweeps], key="tradeoffs_sweep",
                            help="Only the trials of one sweep (and its base measurement)")
    if picked != ALL_RESULTS:
        frame = frame[frame["sweep"] == picked]
    models = sorted(frame["model"].unique())
    protocols = sorted(frame["protocol"].unique())
    kept_models = middle.multiselect("Models", models, default=models, key="tradeoffs_models")
    kept_protocols = right.multiselect("Evaluation", protocols, default=protocols, key="tradeoffs_protocols")
    frame = frame[frame["model"].isin(kept_models) & frame["protocol"].isin(kept_protocols)]
    if frame["protocol"].nunique() > 1:
        st.warning("These results were measured on different texts or windows; their perplexities do not compare. "
                   "Keep one evaluation above.")
    return frame


def chart(frame: pd.DataFrame) -> None:
    cols = st.columns(5)
    x = cols[0].selectbox("x axis", list(results.AXES), format_func=lambda c: results.AXES[c][0], key="tradeoffs_x")
    size = cols[1].selectbox("Marker size", [None, *(c for c in results.AXES if c != x)], key="tradeoffs_size",
                             format_func=lambda c: "the same for all" if c is None else results.AXES[c][0])
    color = cols[2].selectbox("Colour by", ["method", "family", "model"], key="tradeoffs_color",
                              format_func={"method": "method", "family": "method family", "model": "model"}.get)
    tolerance = cols[3].number_input("Tolerance (% over base)", 0.0, 1000.0, 10.0, 1.0, key="tradeoffs_tolerance",
                                     help="Results whose perplexity is at most this much above the base model's "
                                          "are acceptable: the shaded band")
    log_y = cols[4].toggle("Log-scale perplexity", key="tradeoffs_log")
    label, _, lower_better = results.AXES[x]
    plotted = frame.dropna(subset=[f"{x}_axis", "perplexity"])
    if plotted.empty:
        st.info(f"None of these results has {label}. Speed is measured when \"Measure speed\" is on in the sidebar.")
        return
    base = results.base_reference(frame)
    best = results.smallest_within(plotted, base, tolerance / 100, x) if base is not None else None
    figure = cache.tradeoff_figure(tuple(plotted["id"]), x, color, size, log_y, plotted, base, tolerance / 100, best)
    st.plotly_chart(figure, key="tradeoffs_chart")
    answer(frame, base, tolerance, best, x)
    missing = len(frame) - len(plotted)
    st.caption(f"Better is lower perplexity and {'lower' if lower_better else 'higher'} {label}; the dotted line is "
               "the Pareto frontier (the results no other result beats on both). Diamonds are base models. Error "
               "bars are each perplexity's 95% interval over its evaluation windows: two results measured on the same "
               "windows compare more tightly, pairwise (below, and \"vs base\" in the table). Size "
               "counts the bytes the weights take as stored, so a pruned model stored densely is not smaller."
               + (f" {missing} result(s) without {label} are not plotted." if missing else ""))


def answer(frame: pd.DataFrame, base: float | None, tolerance: float, best: str | None, x: str) -> None:
    """The constraint question in words: the best result on the x axis within the tolerance of the base."""
    label = results.AXES[x][0]
    if base is None:
        st.caption("Keep one model and one evaluation above to see its base line and the tolerance band.")
    elif best is None:
        st.warning(f"No result with {label} is within +{tolerance:g}% of the base perplexity {base:.4g}.")
    else:
        row = frame[frame["id"] == best].iloc[0]
        limit = base * (1 + tolerance / 100)
        st.info(f"Within +{tolerance:g}% of the base perplexity {base:.4g} (up to {limit:.4g}), the best by "
                f"{label} is **{row['method']}** (`{best}`): perplexity {row['perplexity']:.4g}, "
                f"{label} {row[f'{x}_axis']:.4g}. It is starred on the chart.")


def compare(frame: pd.DataFrame, rows: dict[str, ResultRow]) -> None:
    ids = list(frame["id"])
    if len(ids) < 2:
        st.caption("Two results (after the filters above) are needed for a comparison.")
        return
    names = {i: f"{i} · {method}" for i, method in zip(frame["id"], frame["method"], strict=True)}
    picked = st.multiselect("Results to compare", ids, default=ids[:2][::-1], key="tradeoffs_compare",
                            format_func=names.get, help="Any number of results, side by side")
    if len(picked) < 2:
        st.caption("Pick two or more results.")
        return
    st.dataframe(results.compare_table(*(rows[i] for i in picked)))
    a = picked[0]
    for other in picked[1:]:
        paired = results.paired_between(rows[a], rows[other])
        st.caption(paired or f"{other} and {a} were not scored on the same windows (model and evaluation), so no "
                              "paired comparison: compare their intervals.")
    layers = {names[i]: results.layer_frame(rows[i]) for i in picked}
    layers = {name: layer for name, layer in layers.items() if layer is not None}
    if not layers:
        st.caption("None of these has a per-layer report (unstructured pruning and quantization steps write one).")
        return
    left, right = st.columns(2)
    pruned = {name: layer for name, layer in layers.items() if layer["sparsity"].notna().any()}
    quantized = {name: layer for name, layer in layers.items() if layer["sqnr_db"].notna().any()}
    if pruned:
        left.plotly_chart(cache.layer_bars_figure(tuple(picked), "sparsity", "Zeros per layer", True, pruned))
    if quantized:
        left.plotly_chart(cache.layer_bars_figure(tuple(picked), "sqnr_db", "Weight SQNR per layer (dB)", False,
                                                  quantized))
    errors = {name: layer for name, layer in layers.items() if layer["rel_error"].notna().any()}
    if errors:
        right.plotly_chart(cache.layer_bars_figure(tuple(picked), "rel_error", "Relative output error per layer", False,
                                                    errors))
    else:
        right.caption("No per-layer output error: it is measured only when calibration data was used.")


def recipes(rows: list[ResultRow]) -> None:
    by_id = {row.id: row for row in rows}
    picked = st.selectbox("Result", list(by_id), key="tradeoffs_recipe",
                          format_func=lambda i: f"{i} · {by_id[i].model} · {by_id[i].status}")
    st.code(by_id[picked].recipe, language="yaml")
    st.download_button("Download this recipe", by_id[picked].recipe, f"recipe-{picked}.yaml", "application/yaml",
                       key="tradeoffs_recipe_download")
    st.caption("Rerun it with `squeezelab run RECIPE.yaml`.")
    if by_id[picked].status == "ok":
        jobs.result_prompt_box(by_id[picked], str(cache.results_store().root))
    unfinished = [row for row in rows if row.status != "ok"]
    if unfinished:
        with st.expander(f"{len(unfinished)} run(s) that did not finish"):
            st.dataframe(pd.DataFrame([{"id": r.id, "model": r.model, "status": r.status, "error": r.error}
                                       for r in unfinished]), hide_index=True)


st.title("Trade-offs")
all_rows = None
with shown("Cannot read the results history"):
    store = cache.results_store()
    all_rows = store.list()
if all_rows is None:
    st.stop()
ok_rows = {row.id: row for row in all_rows if row.status == "ok"}
if not ok_rows:
    st.info("No finished results yet. Run a pruning job on the Prune page or record a baseline on the Model page "
            "(or use `squeezelab eval` / `squeezelab run` on the command line); results appear here.")
else:
    frame = filtered(results.results_frame(list(ok_rows.values())))
    chart(frame)
    st.subheader("Results")
    st.dataframe(frame[TABLE_COLUMNS], hide_index=True, column_config=COLUMN_CONFIG, key="tradeoffs_table")
    # store.to_csv as a callable: the CSV is made when the button is clicked, not on every rerun
    st.download_button("Download every result as CSV", store.to_csv, "squeezelab-results.csv", "text/csv",
                       on_click="ignore")
    st.subheader("Compare results")
    compare(frame, ok_rows)
if all_rows:
    st.subheader("Recipes")
    recipes(all_rows)
