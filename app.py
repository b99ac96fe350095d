"""SqueezeLab dashboard: pick a model in the sidebar, then inspect, prune and compare it.

Run with ``squeezelab app`` or ``streamlit run app.py --server.address 127.0.0.1``.
"""

import streamlit as st

from ui import sidebar
from ui.navigation import technique_pages

st.set_page_config(page_title="SqueezeLab", layout="wide")

PAGES = [
    st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
    *technique_pages(),  # a page per technique in core's step table: Prune, Quantize, Distill
    st.Page("pages/sweep.py", title="Sweep", icon=":material/grid_view:"),
    st.Page("pages/tradeoffs.py", title="Trade-offs", icon=":material/scatter_plot:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

navigation = st.navigation(PAGES)
sidebar.render()
navigation.run()
