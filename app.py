"""SqueezeLab dashboard: pick a model in the sidebar, then inspect, prune and compare it.

Run with ``squeezelab app`` or ``streamlit run app.py --server.address 127.0.0.1``.
The page asks nothing of any server but this one (``tests/test_browser.py`` checks it): the fonts and
icon fonts are Streamlit's own files, and the tab's icon is an emoji, drawn from an inline ``data:``
URL. (Left unset, the tab takes the page's Material icon, which the browser fetches from
fonts.gstatic.com: an offline user would see a failed request in the console.)
"""

import streamlit as st

from ui import sidebar, state
from ui.navigation import technique_pages

st.set_page_config(page_title="SqueezeLab", page_icon="🗜️", layout="wide")

PAGES = {  # page file -> page; the file names the page a job belongs to (ui.jobs)
    "pages/model.py": st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
    **technique_pages(),  # a page per technique in core's step table: Prune, Quantize, Distill
    "pages/plan.py": st.Page("pages/plan.py", title="Plan", icon=":material/tune:"),
    "pages/sweep.py": st.Page("pages/sweep.py", title="Sweep", icon=":material/grid_view:"),
    "pages/tradeoffs.py": st.Page("pages/tradeoffs.py", title="Trade-offs", icon=":material/scatter_plot:"),
    "pages/export.py": st.Page("pages/export.py", title="Export", icon=":material/download:"),
}

current = st.navigation(list(PAGES.values()))
state.set_current_page(next(path for path, page in PAGES.items() if page.url_path == current.url_path))
sidebar.render()
current.run()
