"""Prune: choose a method and an amount, preview a magnitude threshold live, run it in the background."""

import streamlit as st

from core import SpecError, StructuredSpec, params_removed, removal_count
from ui import cache, charts, forms, modelinfo, navigation, state

navigation.inside_app()

METHODS = {
    "magnitude": "Magnitude: drop the smallest |w| (no data needed)",
    "wanda": "Wanda: |w| x input activation norm (calibration)",
    "sparsegpt": "SparseGPT: second-order, updates the kept weights (calibration)",
    "structured": "Structured: remove channels, heads or blocks (the model shrinks)",
}
PATTERNS = {"unstructured": "unstructured", "2:4": "2:4 (keep 2 of every 4)", "4:8": "4:8 (keep 4 of every 8)"}
TARGETS = {"mlp_channels": "MLP channels", "heads": "attention heads (KV groups)", "layers": "decoder blocks"}
IMPORTANCE = {"activation_norm": "activation norms (calibration)", "weight_norm": "weight norms (no data)"}
SESSION = forms.SESSION

selection = state.selection()
st.title("Prune")
loaded = cache.get_base(selection)
if loaded is None:
    st.stop()
st.caption(f"`{selection.model}`: every run prunes its own copy; the loaded model is never changed.")


def threshold_preview() -> float:
    """A |w| threshold slider with the sparsity it gives, overall and per layer, before anything runs."""
    preview = cache.threshold_preview(selection.model, selection.device, selection.dtype)
    top, step, fmt = modelinfo.slider_scale(preview.threshold_for(0.99))
    default = min(top, round(preview.threshold_for(0.5) / step) * step)
    threshold = st.slider("Threshold: zero every weight with |w| below", 0.0, top, default, step, format=fmt,
                          key=f"prune_threshold::{selection.model}::{selection.dtype}", **SESSION)
    overall, per_layer = preview.sparsity_at(threshold)
    st.metric("Sparsity at this threshold", f"{overall:.2%}",
              help=f"over the {preview.total:,} weights of the decoder blocks' linear layers")
    st.plotly_chart(charts.layer_sparsity_bars(per_layer, "Zeros per layer at this threshold"))
    return threshold


def structured_size_preview(params: dict) -> str:
    """The parameters a structured run would remove, counted from the shapes before it runs."""
    try:
        removed = params_removed(loaded.model, StructuredSpec.from_dict(params))
    except SpecError:  # e.g. no MLP projections known for this family: the run itself says why
        return ""
    return ": " + modelinfo.removal_summary(loaded.model, removed)


def amount_params(method: str) -> dict:
    """How much to prune, as PruneSpec / StructuredSpec parameters."""
    if method == "structured":
        target = st.selectbox("Remove", list(TARGETS), format_func=TARGETS.get, key="prune_target", **SESSION)
        fraction = st.slider("Fraction removed", 0.05, 0.9, 0.25, 0.05, key="prune_fraction", **SESSION)
        importance = st.selectbox("Rank units by", list(IMPORTANCE), format_func=IMPORTANCE.get,
                                  key="prune_importance", **SESSION)
        params = {"target": target, "fraction": round(fraction, 4), "importance": importance}
        risk = StructuredSpec(target, params["fraction"], importance).known_risk
        if risk:
            st.warning(risk[0].upper() + risk[1:] + ".")
        total, units = modelinfo.structured_units(loaded.model, target)
        if total and total > 1:
            st.caption(f"Removes {removal_count(fraction, total)} of {total} {units}"
                       f"{structured_size_preview(params)}.")
        return params
    by_threshold = method == "magnitude" and st.radio(
        "Amount", ["sparsity", "threshold"], horizontal=True, key="prune_amount_mode",
        format_func={"sparsity": "by target sparsity", "threshold": "by threshold"}.get, **SESSION) == "threshold"
    if by_threshold:
        return {"threshold": threshold_preview()}
    pattern = st.selectbox("Pattern", list(PATTERNS), format_func=PATTERNS.get, key="prune_pattern", **SESSION)
    if pattern != "unstructured":
        n, m = (int(x) for x in pattern.split(":"))
        st.caption(f"{pattern} keeps {n} of every {m} consecutive weights of each row: sparsity {1 - n / m:.0%}.")
        return {"pattern": pattern}
    params = {"sparsity": round(st.slider("Target sparsity", 0.0, 0.95, 0.5, 0.05, key="prune_sparsity", **SESSION), 4)}
    if method in ("wanda", "sparsegpt") and st.checkbox(
            "OWL: per-block sparsity from outlier shares (λ 0.08, M 5)", False, key="prune_owl", **SESSION,
            help="Blocks whose Wanda scores hold more outliers keep more weights; the overall sparsity stays"):
        params["owl"] = {"lambda": 0.08, "m": 5}
    if method == "magnitude":
        params["scope"] = st.radio("Scope", ["per-matrix", "global"], horizontal=True, key="prune_scope",
                                   help="global: one |w| cut across all layers, so layers end up with different "
                                        "sparsities", **SESSION)
    return params


method = st.selectbox("Method", list(METHODS), format_func=METHODS.get, key="prune_method", **SESSION)
params = {"method": method, **amount_params(method)}
recovery = st.number_input("Recovery fine-tune steps (0 = none)", 0, 5000, 0, 10, key="prune_recovery", **SESSION,
                           help="AdamW on next-token loss over the calibration samples, the zeros held fixed")
if recovery:
    params["recovery_steps"] = int(recovery)
    params["recovery_lr"] = st.select_slider("Recovery learning rate", [1e-5, 3e-5, 1e-4, 3e-4, 1e-3], 1e-4,
                                             key="prune_recovery_lr", format_func=lambda v: f"{v:g}", **SESSION)

recipe = forms.one_step_recipe(selection, loaded, "prune", params, lambda step: step.needs_calibration)
forms.recipe_and_run(recipe, loaded, selection)
