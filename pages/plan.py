"""Plan: how much each layer minds each option (the atlas), and the best choice under a budget before anything runs."""

import streamlit as st

from core import (
    GROUP_SIZES,
    AtlasRequest,
    Budget,
    Recipe,
    Step,
    block_linear_layers,
    prune_menu,
    quantize_menu,
    step_params,
    weight_matrix,
)
from ui import cache, forms, jobs, navigation, planning, state
from ui.errors import shown

navigation.inside_app()

QUANT_METHODS = {"rtn": "RTN: round to nearest", "gptq": "GPTQ: second-order rounding (calibration)",
                 "awq": "AWQ: activation-aware scales, then RTN (calibration)"}
PRUNE_METHODS = {"wanda": "Wanda: |w| x input norm (calibration)", "sparsegpt": "SparseGPT: OBS updates (calibration)",
                 "magnitude": "magnitude: smallest |w|"}
MODES = {"proxy": "proxy: the layer's output error weighted by the loss's gradients (fast)",
         "measured": "measured: KL on held-out windows with only that layer changed (slow, exact)"}
TARGETS = {"quantize": {"avg_bits": "average bits per weight", "size_mb": "size (MB)", "max_ppl": "max perplexity"},
           "prune": {"sparsity": "sparsity", "size_mb": "size (MB, sparse export)", "max_ppl": "max perplexity"}}
SESSION = forms.SESSION

selection = state.selection()
st.title("Plan")
loaded = cache.get_base(selection)
if loaded is None:
    st.stop()
st.caption(f"`{selection.model}`: measure once how much each layer minds each option, then choose per-layer bits "
           "or sparsity for any budget instantly. The planner picks, for every layer, the option that keeps the "
           "summed cost lowest within the budget (an exact knapsack), with sizes as the artifact stores them.")
widths = sorted({weight_matrix(layer).shape[1] for _, layer in block_linear_layers(loaded.model)})


def menu_choice():
    """The technique, method and options every layer chooses from."""
    left, right = st.columns(2)
    technique = left.radio("Technique", ["quantize", "prune"], horizontal=True, key="plan_technique", **SESSION)
    if technique == "quantize":
        method = right.selectbox("Method", list(QUANT_METHODS), format_func=QUANT_METHODS.get, key="plan_qmethod",
                                 **SESSION)
        bits = left.multiselect("Bits a layer may take", list(range(2, 9)), [3, 4], key="plan_bits", **SESSION)
        groups = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
        group = right.selectbox("Group size", [0, *groups], index=min(2, len(groups)), key="plan_group",
                                format_func=lambda g: "per output channel" if g == 0 else str(g), **SESSION)
        return quantize_menu(method, tuple(bits), (group or None,))
    method = right.selectbox("Method", list(PRUNE_METHODS), format_func=PRUNE_METHODS.get, key="plan_pmethod",
                             **SESSION)
    levels = left.multiselect("Sparsities a layer may take", [0.0, 0.25, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9],
                              [0.0, 0.25, 0.5, 0.75], key="plan_levels", format_func="{:.0%}".format, **SESSION)
    return prune_menu(method, tuple(levels))


def atlas_section(request: AtlasRequest):
    """The cached atlas, or the button that builds it in the background."""
    root = str(cache.results_store().root)
    atlas = planning.find_atlas(loaded, request, root)
    if atlas is None:
        st.info("No atlas for these settings yet. Building it walks the model once and solves every option of "
                "every layer" + (", then scores each on held-out windows." if request.mode == "measured" else "."))
        if st.button("Build the atlas", type="primary", key="plan_build"):
            state.remember_job(planning.submit_atlas(loaded, request, root))
            st.rerun()
        return None
    timing = atlas.timings.get("total_s", 0)
    rho = atlas.spearman()
    heldout = atlas.settings.get("heldout")
    st.caption(f"Atlas {atlas.key}: {len(atlas.layers)} layers x {len(atlas.menu.options)} options, built in "
               f"{timing:.0f} s; base perplexity {atlas.base_perplexity:.3f} on {heldout} held-out calibration "
               "windows" + (f"; proxy vs measured rank correlation {rho['all']:.2f}" if rho else ""))
    return atlas


@st.fragment
def budget_section(atlas, request: AtlasRequest, calibration) -> None:
    """The budget slider, the plan it gives (highlighted on the atlas) and the button that runs it."""
    plans = planning.planner(atlas.key, request.mode, atlas)
    targets = TARGETS[atlas.menu.technique]
    left, right = st.columns([1, 2])
    target = left.radio("Budget", list(targets), format_func=targets.get, key="plan_target", **SESSION)
    if target == "max_ppl":
        low = planning.reachable_perplexity(plans)
        value = right.slider("Predicted perplexity at most", low * 1.0001, low * 2, low * 1.1, format="%.3f",
                             key="plan_value_ppl")
    else:
        low, high = planning.budget_range(plans, target)
        value = right.slider(targets[target], float(low), float(high), float(low + high) / 2,
                             step=(high - low) / 200 or 0.01, format="%.3f", key=f"plan_value_{target}")
    plan = None
    with shown("This budget cannot be planned"):
        plan = plans.plan(Budget(target, value, request.mode, request.heldout, request.heldout_tokens))
    if plan is None:
        return
    cols = st.columns(4)
    cols[0].metric("Predicted size", f"{plan.size_bytes / 1e6:.3f} MB", help="Every weight as stored")
    cols[1].metric("Bits per weight (planned layers)", f"{plan.avg_bits:.3f}")
    cols[2].metric("Sparsity (planned layers)", f"{plan.sparsity:.1%}")
    cols[3].metric("Predicted perplexity", f"{plan.perplexity:.3f}", delta=f"x{plan.perplexity_ratio:.4f} vs base",
                   delta_color="off")
    chosen = [atlas.menu.options.index(option) for option in plan.options]
    st.plotly_chart(planning.cached_atlas_figure(atlas.key, request.mode, tuple(chosen), atlas), key="plan_atlas_chart")
    params = step_params(plan, atlas.menu.technique, {"method": atlas.menu.method}, atlas.key, request.mode)
    evaluation, _ = selection.eval_spec(loaded.context_length)
    recipe = Recipe(model=selection.model, steps=(Step(atlas.menu.technique, params),), calibration=calibration,
                    evaluation=evaluation, device=selection.recipe_device, dtype=selection.recipe_dtype)
    with st.expander("Recipe of this plan"):
        st.code(recipe.to_yaml(), language="yaml")
    if st.button("Run this plan", type="primary", key="plan_run"):
        state.remember_job(jobs.submit(recipe, loaded))
        st.rerun(scope="app")


def history_section() -> None:
    """Every planned run so far: predicted beside measured."""
    rows = [row for row in cache.results_store().list() if row.status == "ok"]
    frame = planning.cached_planned_runs(tuple(row.id for row in rows), rows)
    if frame.empty:
        st.caption("Planned runs appear here with their predicted and measured perplexity.")
        return
    st.subheader("Planned runs: predicted and measured")
    st.plotly_chart(planning.prediction_figure(frame), key="plan_history_chart")
    st.dataframe(frame, hide_index=True, key="plan_history_table",
                 column_config={"predicted": st.column_config.NumberColumn(format="%.3f"),
                                "measured": st.column_config.NumberColumn(format="%.3f"),
                                "size_mb": st.column_config.NumberColumn("size (MB)", format="%.3f")})
    st.caption(f"Largest relative error: {planning.relative_error(frame):.1%} over {len(frame)} run(s). Predicted = "
               "the run's base perplexity x exp(the planned cost through the atlas's fit).")


menu = None
with shown("These options cannot be planned"):
    menu = menu_choice()
if menu is None:
    st.stop()
mode = st.radio("Costs", list(MODES), format_func=MODES.get, key="plan_mode", **SESSION)
heldout = st.number_input("Held-out calibration windows (score the costs)", 1, 64, 2, key="plan_heldout", **SESSION)
calibration = forms.calibration_spec(selection, loaded, "plan")
request = AtlasRequest(selection.model, menu, mode, calibration, int(heldout))
atlas = atlas_section(request)
if atlas is not None:
    budget_section(atlas, request, calibration)
jobs.job_panel(extra=planning.prediction_note)
history_section()
