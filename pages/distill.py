"""Distill: train a student to match the selected model, with live loss and held-out perplexity curves."""

import plotly.graph_objects as go
import streamlit as st

from core import Recipe, Step, evenly_spaced_layers
from ui import cache, forms, jobs, modelinfo, navigation, state
from ui.errors import shown

navigation.inside_app()

STUDENTS = {
    "model": "Another model with the same tokenizer",
    "layer_drop": "A layer-dropped copy of this model",
    "width": "A width-reduced copy of this model (fewer MLP channels)",
    "self": "This model, pruned first, then recovered (zeros held fixed)",
}
LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
SESSION = {"persist_state": "session"}  # page settings survive a visit to another page

selection = state.selection()
st.title("Distill")
loaded = cache.get_base(selection)
if loaded is None:
    st.stop()
st.caption(f"Teacher: `{selection.model}` (the sidebar's model), frozen. Every run trains its own student; "
           "the loaded model is never changed.")


def student_steps() -> tuple[list[Step], dict]:
    """Steps before the distill step (a prune for recovery) and the distill step's student parameters."""
    kind = st.radio("Student", list(STUDENTS), format_func=STUDENTS.get, key="distill_student", **SESSION)
    if kind == "model":
        default = "sample:student" if selection.model != "sample:student" else ""
        ref = st.text_input("Student model reference", default, key="distill_student_ref", **SESSION,
                            help="A sample, a folder or a Hub id whose tokenizer is the teacher's")
        return [], {"student": ref.strip()}
    if kind == "layer_drop":
        total, _ = modelinfo.structured_units(loaded.model, "layers")
        if not total or total < 2:
            st.warning("This model has a single decoder block; there is nothing to drop.")
            return [], {"student": "layer_drop"}
        kept = st.slider("Blocks kept", 1, total - 1, max(1, total // 2), key="distill_layers_kept", **SESSION)
        keep = evenly_spaced_layers(total, kept)
        st.caption(f"Keeps blocks {list(keep)} of {total}, initialised from the teacher's weights.")
        return [], {"student": "layer_drop", "keep_layers": list(keep)}
    if kind == "width":
        fraction = st.slider("Share of MLP channels removed", 0.1, 0.9, 0.5, 0.05, key="distill_width", **SESSION)
        return [], {"student": "width", "width_fraction": round(fraction, 4)}
    sparsity = st.slider("Magnitude sparsity first", 0.1, 0.9, 0.5, 0.05, key="distill_sparsity", **SESSION)
    return [Step("prune", {"method": "magnitude", "sparsity": round(sparsity, 4)})], {"student": "self"}


def training_params() -> dict:
    """Loss weights and the schedule, as DistillSpec parameters."""
    left, right = st.columns(2)
    temperature = left.slider("Temperature T", 0.5, 10.0, 2.0, 0.5, key="distill_temperature", **SESSION,
                              help="Softens both distributions; the KD term is scaled by T² so its gradient keeps "
                                   "its size")
    alpha = right.slider("α (weight of the KD term)", 0.0, 1.0, 0.5, 0.05, key="distill_alpha", **SESSION,
                         help="1 - α goes to the next-token cross-entropy; α = 0 is plain fine-tuning")
    steps = left.number_input("Steps", 1, 100_000, 100, 10, key="distill_steps", **SESSION)
    lr = right.select_slider("Peak learning rate", LEARNING_RATES, 1e-4, key="distill_lr",
                             format_func=lambda v: f"{v:g}", **SESSION)
    batch = left.number_input("Windows per step", 1, 256, 8, key="distill_batch", **SESSION)
    longest = loaded.context_length
    seqlen = right.number_input("Tokens per window", 8, longest, min(256, longest), key="distill_seqlen", **SESSION)
    every = left.number_input("Held-out perplexity every N steps (0: before and after only)", 0, 100_000, 25,
                              key="distill_eval_every", **SESSION)
    minutes = right.number_input("Time budget in minutes (0: none)", 0.0, 10_000.0, 0.0, key="distill_minutes",
                                 **SESSION)
    text = forms.training_text("Training text", "training", selection, loaded, "distill_text")
    return {"temperature": float(temperature), "alpha": float(alpha), "steps": int(steps), "lr": lr,
            "batch_size": int(batch), "seqlen": int(seqlen), "eval_every": int(every),
            "max_minutes": float(minutes) or None, "text": text}


def curve_figures(curve: list[dict]) -> tuple[go.Figure, go.Figure]:
    """(training loss terms per step, held-out perplexity per evaluation)."""
    trained = [r for r in curve if r.get("loss") is not None]
    losses = go.Figure()
    for name in ("loss", "kd", "ce"):
        losses.add_trace(go.Scatter(x=[r["step"] for r in trained], y=[r[name] for r in trained], mode="lines",
                                    name={"loss": "total", "kd": "KD (T²·KL)", "ce": "next-token CE"}[name]))
    losses.update_layout(title="Training loss", xaxis_title="step", height=320, margin={"l": 10, "r": 10, "t": 40})
    evaluated = [r for r in curve if r.get("eval_perplexity") is not None]
    perplexity = go.Figure(go.Scatter(x=[r["step"] for r in evaluated], y=[r["eval_perplexity"] for r in evaluated],
                                      mode="lines+markers", name="held-out"))
    perplexity.update_layout(title="Held-out perplexity", xaxis_title="step", height=320,
                             margin={"l": 10, "r": 10, "t": 40})
    return losses, perplexity


def distill_report(job: jobs.Job) -> dict | None:
    """The distill step's report of a finished job (or of one cancelled while training), from the results store."""
    if job.status not in ("done", "cancelled") or not job.result_id:
        return None
    row = cache.store_at(job.results_dir).get(job.result_id)
    return next((s for s in row.details.get("steps", []) if s.get("kind") == "distill"), None)


def show_training(job: jobs.Job) -> None:
    """Live curves while the job trains; the summary of the run once it is done."""
    report = distill_report(job)
    curve = job.curve or (report or {}).get("curve", [])
    if curve:
        left, right = st.columns(2)
        losses, perplexity = curve_figures(curve)
        left.plotly_chart(losses, key=f"distill_loss_{job.id}")
        right.plotly_chart(perplexity, key=f"distill_ppl_{job.id}")
    if report is not None:
        best = report["best_perplexity"]
        best_text = f"{best:.2f} (best, at step {report['best_step']}, kept)" if best is not None else "n/a"
        steps = f"{report['steps_done']}/{report['steps_planned']} steps ({report['stopped']})"
        st.caption(f"{report['student']}: {steps}, held-out perplexity "
                   f"{report['initial_perplexity']:.2f} → {best_text}, "
                   f"{report['tokens_per_s']:,.0f} tokens/s, {report['precision']} on {report['device']}")


recipe = None
with shown("These settings cannot run"):
    before, student = student_steps()
    params = {**student, **training_params()}
    evaluation, note = selection.eval_spec(loaded.context_length)
    if note:
        st.warning(note)
    recipe = Recipe(model=selection.model, steps=(*before, Step("distill", params)), evaluation=evaluation,
                    device=selection.recipe_device, dtype=selection.recipe_dtype, **selection.load_options)

if recipe is not None:
    st.caption(f"Evaluated on {selection.protocol(loaded.context_length)}"
               f"{', with speed' if recipe.evaluation.latency else ''} (sidebar settings); the best checkpoint is "
               "chosen on held-out windows of the training text.")
    with st.expander("Recipe"):
        st.code(recipe.to_yaml(), language="yaml")
if st.button("Run", type="primary", disabled=recipe is None):
    state.remember_job(jobs.submit(recipe, loaded))
jobs.job_panel(extra=show_training)
