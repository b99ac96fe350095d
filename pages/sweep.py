"""Sweep: vary a technique's parameters over a grid or an Optuna search, watch the Pareto front fill in."""

import streamlit as st
import yaml

from core import SweepSpec, sweep_cost, sweep_names
from ui import cache, forms, jobs, navigation, state, sweep_view, sweeps
from ui.errors import shown

navigation.inside_app()

SESSION = forms.SESSION
MODES = {"grid": "Grid: every combination", "search": "Search: Optuna proposes trials (multi-objective)"}

selection = state.selection()
st.title("Sweep")
loaded = cache.get_base(selection)
if loaded is None:
    st.stop()
st.caption(f"`{selection.model}`: every trial is an ordinary run of its own recipe on a copy of the model, tagged "
           "with the sweep; the base model is measured once. Running the same sweep name again resumes it.")


def grid_values(param: sweeps.Param, key: str) -> list:
    return st.multiselect(param.label, list(param.options), default=list(param.default), key=key, **SESSION)


def search_values(param: sweeps.Param, key: str) -> list | tuple:
    if param.kind == "choice":
        return grid_values(param, key)
    low, high = param.bounds
    step = param.step_size or 1
    picked = st.slider(param.label, low, high, (low, high), step, key=key, **SESSION)
    return tuple(picked)


def chosen_values(technique: str, mode: str) -> dict:
    """Path -> the grid's values or the search's range, for each parameter of the chain."""
    values, columns = {}, st.columns(len(sweeps.params_of(technique)))
    for column, param in zip(columns, sweeps.params_of(technique), strict=True):
        with column:
            key = f"sweep_{mode}_{param.step}_{param.name}"
            values[sweeps.path_of(technique, param)] = (grid_values if mode == "grid" else search_values)(param, key)
    return values


technique = st.selectbox("What to vary", list(sweeps.TECHNIQUES), format_func=sweeps.TECHNIQUE_LABELS.get,
                         key="sweep_technique", **SESSION)
mode = st.radio("How", list(MODES), format_func=MODES.get, horizontal=True, key="sweep_mode", **SESSION)
values = chosen_values(technique, mode)
search = None
if mode == "search":
    left, right = st.columns(2)
    trials = left.number_input("Trials (the search's budget)", 2, 500, 20, key="sweep_trials", **SESSION)
    sampler = right.selectbox("Sampler", ["tpe", "nsga2", "random"], key="sweep_sampler", **SESSION,
                              help="tpe: multi-objective TPE; nsga2: a genetic algorithm; random: a baseline")
    search = {"trials": int(trials), "sampler": sampler}
tolerance = st.slider("Acceptable: perplexity at most this much above the base model's (%)", 0, 50, 10, 1,
                      key="sweep_tolerance", **SESSION)
calibration = forms.calibration_spec(selection, loaded, "sweep") if sweeps.needs_calibration(values) else None
left, mid, right = st.columns([2, 1, 1])
name = left.text_input("Sweep name (the same name resumes it; empty: named after its settings)", key="sweep_name",
                       **SESSION).strip()
max_trials = mid.number_input("Stop after N trials (0: no cap)", 0, 10_000, 0, key="sweep_max_trials", **SESSION)
max_minutes = right.number_input("Stop after M minutes (0: no cap)", 0, 10_000, 0, key="sweep_max_minutes", **SESSION)

spec = None
with shown("These settings cannot run"):
    base = sweeps.base_recipe(selection, loaded, technique, calibration)
    mapping = sweeps.sweep_mapping(base, technique, values, tolerance / 100, search, name)
    spec = SweepSpec.from_dict(mapping)
    cost = sweep_cost(spec, cache.results_store(), int(max_trials) or None)
    st.info(f"Sweep `{spec.name}`: {cost.describe()}. Evaluated on {selection.protocol(loaded.context_length)} "
            "(sidebar settings).")
    with st.expander("Sweep file"):
        text = yaml.safe_dump(mapping, sort_keys=False)
        st.code(text, language="yaml")
        st.download_button("Download the sweep file", text, f"{spec.name}.yaml", "application/yaml",
                           key="sweep_file_download")
        st.caption(f"Run it from the command line with `squeezelab sweep {spec.name}.yaml` "
                   "(add `--backend ray` for a Ray cluster).")
if st.button("Run sweep", type="primary", disabled=spec is None):
    state.remember_job(sweeps.submit(spec, loaded, int(max_trials) or None, float(max_minutes) or None))
    sweep_view.remember_shown(spec.name)
jobs.job_panel(extra=sweep_view.live_front)

st.subheader("Results")
names: list[str] = []
with shown("Cannot read the results history"):
    names = sweep_names(cache.results_store())
if not names:
    st.info("No sweep yet: choose what to vary above and press Run sweep.")
else:
    sweep_view.report_section(sweep_view.pick_sweep(names))
