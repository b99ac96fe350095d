"""Model: what the selected model is, its linear layers and weights, its baseline, a sample output."""

import pandas as pd
import streamlit as st

from core import Recipe
from ui import cache, charts, generation, jobs, navigation, results, state
from ui.errors import shown

navigation.inside_app()

selection = state.selection()
st.title("Model")
loaded = cache.get_base(selection)
if loaded is None:
    st.stop()

summary = cache.model_summary(selection.model, selection.device, selection.dtype)
st.caption(f"`{selection.model}` · {summary['architecture']} · on {summary['device']} in {summary['dtype']}")
cols = st.columns(4)
cols[0].metric("Parameters", f"{summary['params'] / 1e6:,.2f} M", help=f"{summary['params']:,} (tied weights once)")
cols[1].metric("Size in memory", f"{summary['size_bytes'] / 1e6:,.1f} MB")
cols[2].metric("Bits per weight", f"{summary['bits_per_weight']:.1f}")
cols[3].metric("Context", f"{summary['context']:,} tokens")
with st.expander("Architecture"):
    fields = {k: v for k, v in summary.items() if k not in ("params", "size_bytes", "bits_per_weight")}
    st.dataframe(pd.DataFrame({"value": [str(v) for v in fields.values()]}, index=list(fields)), width="content")

st.subheader("Linear layers in the decoder blocks")
rows = cache.layer_rows(selection.model, selection.device, selection.dtype)
left, right = st.columns([1, 1])
left.dataframe(pd.DataFrame(rows), hide_index=True, height=360,
               column_config={"params": st.column_config.NumberColumn(format="localized")})
with right:
    layer = st.selectbox("Layer", [r["name"] for r in rows], key="model_hist_layer")
    log_y = st.toggle("Log scale", key="model_hist_log")
    edges, counts = cache.magnitude_histogram(selection.model, selection.device, selection.dtype, layer)
    st.plotly_chart(charts.magnitude_histogram(edges, counts, layer, log_y))

st.subheader("Baseline")
spec, note = selection.eval_spec(loaded.context_length)
if note:
    st.warning(note)
st.caption(f"Measured on {selection.protocol(loaded.context_length)}"
           f"{', with speed' if spec.latency else ''} (sidebar settings).")
baseline_key = f"baseline::{selection.model}|{selection.device}|{selection.dtype}|{spec}"
left, right = st.columns(2)
if left.button("Measure the baseline", type="primary"):
    state.set_flag(baseline_key)
if right.button("Record the baseline as a result", help="Runs in the background; the result appears on Trade-offs "
                                                          "as a base point."):
    with shown("Cannot record the baseline"):
        recipe = Recipe(model=selection.model, evaluation=spec, device=selection.recipe_device,
                        dtype=selection.recipe_dtype)
        state.remember_job(jobs.submit(recipe, loaded))
if state.flag(baseline_key):
    with shown("Measuring the baseline"):
        measured = cache.baseline_metrics(selection.model, spec.text, spec.seqlen, spec.max_windows,
                                          selection.device, selection.dtype, spec.latency)
        baseline = results.baseline_row(selection.model, measured)
        cols = st.columns(4)
        cols[0].metric("Perplexity", results.perplexity_value(baseline),
                       help="± half the 95% interval over the evaluation windows")
        cols[1].metric("Top-1 accuracy", f"{measured['top1_acc']:.1%}")
        cols[2].metric("Tokens scored", f"{measured['tokens_scored']:,}",
                       help=f"{measured['windows']} windows of {measured['seqlen']} tokens")
        if measured["prefill_ms"] is not None:
            latency = measured["latency"]
            cols[3].metric("Decode", f"{measured['decode_tok_s']:.1f} tokens/s",
                           delta=f"prefill {measured['prefill_ms']:.1f} ms", delta_color="off", delta_arrow="off")
        st.caption(results.interval_caption(baseline))
        if measured["prefill_ms"] is not None:
            st.caption(f"Speed: {results.speed_caption(baseline)}; prompt {latency['prompt_tokens']} tokens, "
                       f"{latency['new_tokens']} new tokens, medians ({latency['dtype']}); peak memory "
                       f"{measured['peak_mem_bytes'] / 2**20:,.0f} MiB.")
            st.caption(results.loop_caption(baseline) or "")
        for note in results.notes(baseline):
            st.warning(note)
jobs.job_panel()

st.subheader("Generate")
default_prompt = "def read_config(path):\n" if loaded.source.kind == "sample" else "The capital of France is"
with shown("Generation"):
    generation.prompt_box("model", lambda: loaded, default_prompt)
