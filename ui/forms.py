"""Form pieces every technique page shares: the calibration settings and the recipe / Run / job section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core.calibration import CalibrationSpec
from core.models import LoadedModel
from core.recipe import Recipe, Step
from ui import jobs, sources, state
from ui.errors import shown

SESSION = {"persist_state": "session"}  # page settings survive a visit to another page


def calibration_spec(selection: state.Selection, loaded: LoadedModel, prefix: str) -> CalibrationSpec:
    """Calibration text, sample count and length; widget keys start with ``prefix``."""
    st.markdown("**Calibration**")
    choices = sources.calibration_text_choices(selection.text, selection.text_label)
    left, mid, right = st.columns([2, 1, 1])
    text = left.selectbox("Calibration text", list(choices), format_func=choices.get, key=f"{prefix}_calib_text",
                          **SESSION)
    samples = mid.number_input("Samples", 1, 1024, 64, key=f"{prefix}_calib_samples", **SESSION)
    longest = loaded.context_length
    seqlen = right.number_input("Tokens each", 8, longest, min(512, longest), key=f"{prefix}_calib_seqlen", **SESSION)
    return CalibrationSpec(text=text, samples=int(samples), seqlen=int(seqlen), seed=0)


def recipe_and_run(recipe: Recipe | None, loaded: LoadedModel, selection: state.Selection) -> None:
    """The recipe as YAML, the Run button (a background job) and the current job's panel."""
    if recipe is not None:
        st.caption(f"Evaluated on {selection.protocol(loaded.context_length)}"
                   f"{', with speed' if recipe.evaluation.latency else ''} (sidebar settings).")
        with st.expander("Recipe"):
            st.code(recipe.to_yaml(), language="yaml")
    if st.button("Run", type="primary", disabled=recipe is None):
        state.remember_job(jobs.submit(recipe, loaded))
    jobs.job_panel()


def one_step_recipe(selection: state.Selection, loaded: LoadedModel, kind: str, params: dict[str, Any],
                    needs_calibration: Callable[[Any], bool],
                    check: Callable[[Any], None] | None = None) -> Recipe | None:
    """A recipe of one ``kind`` step with the sidebar's evaluation; None (and an error shown) when invalid.

    ``needs_calibration(parsed_step)`` decides whether the calibration settings are asked for;
    ``check(parsed_step)`` may refuse settings the loaded model cannot take.
    """
    with shown("These settings cannot run"):
        step = Step(kind, params)
        if check is not None:
            check(step.parsed)
        calibration = CalibrationSpec()
        if needs_calibration(step.parsed):
            calibration = calibration_spec(selection, loaded, kind)
        evaluation, note = selection.eval_spec(loaded.context_length)
        if note:
            st.warning(note)
        return Recipe(model=selection.model, steps=(step,), calibration=calibration, evaluation=evaluation,
                      device=selection.recipe_device, dtype=selection.recipe_dtype)
    return None
