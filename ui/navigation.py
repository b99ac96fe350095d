"""Every page runs inside app.py (page config, sidebar, st.navigation), however Streamlit started it.

Until ``st.navigation`` has run once in the server process, Streamlit takes a folder named
``pages/`` beside the entry script for a legacy multipage app. So the first request after a server
start that names a page (a browser tab reconnecting to ``/prune?job=...``) runs that page file on
its own: no page config, no sidebar, a navigation menu listing files. ``inside_app()`` notices
and runs app.py instead, whose ``st.navigation`` then runs the requested page properly.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st

from core import STEP_KINDS

APP = Path(__file__).resolve().parent.parent / "app.py"
PAGES_DIR = APP.parent / "pages"
# icons of the technique pages; a technique added to core.recipe.steps.STEPS with a page gets the default
TECHNIQUE_ICONS = {"prune": ":material/content_cut:", "quantize": ":material/compress:", "distill": ":material/school:"}
DEFAULT_ICON = ":material/tune:"


def technique_pages() -> dict:
    """Page file -> page for each step kind of the recipe format with a ``pages/<kind>.py``, in the table's order."""
    return {f"pages/{kind}.py": st.Page(f"pages/{kind}.py", title=kind.capitalize(),
                                        icon=TECHNIQUE_ICONS.get(kind, DEFAULT_ICON))
            for kind in STEP_KINDS if (PAGES_DIR / f"{kind}.py").is_file()}


def _legacy_mode() -> bool:
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without this flag: nothing to work around
        return False
    return bool(PagesManager.uses_pages_directory)


def inside_app() -> None:
    """Call first in every page: if Streamlit started this page without app.py, run app.py and stop."""
    if _legacy_mode():
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()
