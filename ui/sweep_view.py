"""What the Sweep page draws of a sweep: the front filling in while it runs, then the report and the best trial."""

from __future__ import annotations

import streamlit as st
import yaml

from core import Recipe, SweepReport, SweepSpec
from core.store import default_results_dir
from ui import jobs, state, sweep_charts, sweeps
from ui.errors import shown

_SHOWN_KEY = "squeezelab_sweep_shown"
LABEL_PREFIX = "sweep "  # a sweep job's label: "sweep NAME on MODEL"
EXPORT_FORMATS = {"hf": "Hugging Face folder", "gguf": "GGUF (llama.cpp)", "compressed-tensors": "compressed-tensors"}


def remember_shown(name: str) -> None:
    st.session_state[_SHOWN_KEY] = name


def pick_sweep(names: list[str]) -> str:
    """The sweep to show: the one this session ran last, else the most recent; the user may pick another."""
    wanted = st.session_state.get(_SHOWN_KEY)
    index = names.index(wanted) if wanted in names else 0
    picked = st.selectbox("Sweep", names, index=index, help="Every sweep in the results history, newest first.")
    remember_shown(picked)
    return picked


def _front(spec: SweepSpec, report: SweepReport, key: str) -> None:
    frame = sweeps.trials_frame(report)
    finished = frame[frame["status"] == "ok"].dropna(subset=["perplexity", "size_mb"])
    base = report.base
    constraint = next((c for c in report.constraints if c.metric == "perplexity"), None)
    bound = constraint.bound(report.base_value("perplexity")) if constraint is not None else None
    figure = sweep_charts.pareto_figure(finished, report.base_value("perplexity"),
                                        base.size_bytes / 1e6 if base is not None and base.size_bytes else None, bound,
                                        title=f"{spec.name}: perplexity against size")
    st.plotly_chart(figure, key=key)


def live_front(job: jobs.Job) -> None:
    """Inside a sweep job's panel: the trials finished so far, drawn again at every poll."""
    if not job.label.startswith(LABEL_PREFIX):
        return
    name = job.label[len(LABEL_PREFIX):].split(" ")[0]
    if job.curve:
        last = job.curve[-1]
        st.caption(f"{last['finished']} of {last['planned']} trial(s) finished; "
                   f"last: {last['label']} ({last['status']})")
    if job.status not in jobs.ACTIVE:
        return  # the page's report below shows the finished sweep
    found = sweeps.report_of(name, job.results_dir)
    if found is not None and found[1].trials:
        _front(*found, key=f"sweep-live-{job.id}")


def _best(report: SweepReport) -> None:
    if report.best is None:
        st.warning("No finished trial meets the constraint yet.")
        return
    best = report.row(report.best)
    size = f"{best.size_bytes / 1e6:.2f} MB" if best.size_bytes is not None else "n/a"
    st.success(f"Best acceptable trial: {best.id} · {sweeps.short_label(sweeps.trial_params(best))} · "
               f"perplexity {best.perplexity:.4g} · size {size}")
    st.code(best.recipe, language="yaml")
    left, mid, right = st.columns([1, 2, 1])
    left.download_button("Download its recipe", best.recipe, f"recipe-{best.id}.yaml", "application/yaml",
                         key="sweep_best_recipe")
    fmt = mid.radio("Export it as", list(EXPORT_FORMATS), format_func=EXPORT_FORMATS.get, horizontal=True,
                    key="sweep_export_format")
    if right.button("Export the best trial", key="sweep_export"):
        with shown("Cannot export this trial"):
            recipe = Recipe.from_dict({**yaml.safe_load(best.recipe), "export": {"format": fmt, "zip": True}})
            state.remember_job(jobs.submit(recipe))
            st.rerun()


def report_section(name: str) -> None:
    """A stored sweep: its numbers, the front, the parallel coordinates, the table and the best trial."""
    found = sweeps.report_of(name, str(default_results_dir()))
    if found is None:
        st.info(f"Sweep {name!r} has rows but its sweep file is not kept beside the results; run it again to see it.")
        return
    spec, report = found
    ok = [row for row in report.trials if row.status == "ok"]
    cols = st.columns(4)
    cols[0].metric("Trials", f"{len(ok)} of {len(report.trials)} finished")
    cols[1].metric("On the Pareto front", len(report.pareto))
    cols[2].metric("Acceptable", len(report.acceptable),
                   help=" and ".join(c.describe(report.base_value(c.metric)) for c in report.constraints) or None)
    cols[3].metric("Base perplexity", f"{report.base_value('perplexity'):.4g}" if report.base else "n/a")
    if ok:
        _front(spec, report, key="sweep-front")
    frame = sweeps.trials_frame(report)
    finished = frame[frame["status"] == "ok"]
    # a parameter that takes one value in every finished trial adds an axis with nothing on it
    params = {c: label for c, label in sweeps.param_labels(report).items() if finished[c].astype(str).nunique() > 1}
    if len(finished) >= 2 and params:
        st.plotly_chart(sweep_charts.parallel_figure(finished, params, {"perplexity": "perplexity",
                                                                        "size_mb": "size (MB)"}), key="sweep-parallel")
    shown_columns = ["id", "label", "status", "perplexity", "size_mb", "bits_per_weight", "kl_to_base", "wall_s",
                     "pareto", "acceptable", "best", "error"]
    st.dataframe(frame[shown_columns], hide_index=True, key="sweep_table",
                 column_config={"size_mb": st.column_config.NumberColumn("size (MB)", format="%.3f"),
                                "perplexity": st.column_config.NumberColumn(format="%.4f"),
                                "wall_s": st.column_config.NumberColumn("wall s", format="%.1f")})
    _best(report)
