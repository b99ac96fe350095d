"""The session's job on the pages that did not start it: a few lines in the sidebar and a link to its page.

A job's panel (``ui.jobs.job_panel``) is drawn only on the page that started it, so a job of the
Prune page does not follow the user to every page; the other pages show this indicator instead.
"""

from __future__ import annotations

import streamlit as st

from ui import jobs, state


def _page_title(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".py").capitalize()


def job_indicator() -> None:
    """The session's job, in a few lines with a link to its page, on every page but the one that started it."""
    job_id = state.current_job_id()
    job = jobs.worker().get(job_id) if job_id else None
    if job is None or jobs.on_its_page(job):
        return
    if job.status in jobs.ACTIVE:
        _live_indicator(job.id)
    else:
        _indicator(job)


@st.fragment(run_every=2.0)
def _live_indicator(job_id: str) -> None:
    job = jobs.worker().get(job_id)
    if job is not None:
        _indicator(job)
    if job is None or job.status not in jobs.ACTIVE:
        st.rerun()  # the whole page: stop polling


def _indicator(job: jobs.Job) -> None:
    with st.container(border=True):
        st.caption(f"**Job {job.id}** · {job.label}")
        if job.status == "running":
            st.progress(job.fraction, text=job.stage)
        else:
            result = f" · result {job.result_id}" if job.result_id and job.status != "failed" else ""
            st.caption(f"{job.status}{result}")
        st.page_link(job.page, label=f"Follow it on the {_page_title(job.page)} page", icon=":material/open_in_new:")
