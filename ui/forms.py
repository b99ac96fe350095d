"""Form pieces every technique page shares: the calibration (or training) text and settings, and the
recipe / Run / job section.

The calibration and training text default to the model's own (``default_calibration_text``: the
samples' training text for the sample models, WikiText-2 validation for others), shown by name; a
choice from another domain than the sidebar's evaluation text earns a warning here and in the run's notes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st

from core import data
from core.calibration import CalibrationSpec
from core.models import LoadedModel
from core.recipe import Recipe, Step, domain_warning, resolved_source
from ui import jobs, state
from ui.errors import shown

SESSION = {"persist_state": "session"}  # page settings survive a visit to another page
TEXT_LABELS = {
    data.SAMPLE_TRAIN_SOURCE: "Sample training text (Python source)",
    data.WIKITEXT2_VALID_SOURCE: "WikiText-2 validation (disjoint from the test split)",
}


def training_text_choices(selection: state.Selection, loaded: LoadedModel) -> dict[str, str]:
    """Calibration / training text source -> label: the model's own default first (preselected), then the
    other texts this machine has, then the evaluation text."""
    own = loaded.source.default_calibration_text
    choices = {own: f"{TEXT_LABELS.get(own, own)} · this model's default"}
    choices.setdefault(data.SAMPLE_TRAIN_SOURCE, TEXT_LABELS[data.SAMPLE_TRAIN_SOURCE])  # always here: bundled
    shared = data.shared_data_dir()
    if shared is not None and (shared / "wikitext-2-tokens" / "wiki.valid.tokens").is_file():
        choices.setdefault(data.WIKITEXT2_VALID_SOURCE, TEXT_LABELS[data.WIKITEXT2_VALID_SOURCE])
    choices.setdefault(selection.text, f"The evaluation text ({selection.text_label})")
    return choices


def training_text(label: str, role: str, selection: state.Selection, loaded: LoadedModel, key: str,
                  container=st) -> str:  # noqa: ANN001 - a Streamlit container (st or a column)
    """A text picker preselected on the model's own default; warns when the text's domain is not the evaluation
    text's. The widget is keyed per model (``key::model``), so another model starts on its own default."""
    choices = training_text_choices(selection, loaded)
    text = container.selectbox(label, list(choices), format_func=choices.get, key=f"{key}::{selection.model}",
                               **SESSION)
    warning = domain_warning(role, text, resolved_source(selection.text, loaded.source.default_text))
    if warning:
        st.warning(warning[0].upper() + warning[1:] + ".")
    return text


def calibration_spec(selection: state.Selection, loaded: LoadedModel, prefix: str) -> CalibrationSpec:
    """Calibration text, sample count and length; widget keys start with ``prefix``."""
    st.markdown("**Calibration**")
    left, mid, right = st.columns([2, 1, 1])
    samples = mid.number_input("Samples", 1, 1024, 64, key=f"{prefix}_calib_samples", **SESSION)
    longest = loaded.context_length
    seqlen = right.number_input("Tokens each", 8, longest, min(512, longest), key=f"{prefix}_calib_seqlen", **SESSION)
    text = training_text("Calibration text", "calibration", selection, loaded, f"{prefix}_calib_text", left)
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
                      device=selection.recipe_device, dtype=selection.recipe_dtype, **selection.load_options)
    return None
