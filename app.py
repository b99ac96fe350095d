"""SqueezeLab dashboard: pick a model in the sidebar, then inspect, prune and compare it.

Run with ``squeezelab app`` or ``streamlit run app.py --server.address 127.0.0.1``.
"""

import streamlit as st

from ui import sidebar

st.set_page_config(page_title="SqueezeLab", layout="wide")

PAGES = [
    st.Page("pages/model.py", title="Model", icon=":material/memory:", default=True),
    st.Page("pages/prune.py", title="Prune", icon=":material/content_cut:"),
    st.Page("pages/quantize.py", title="Quantize", icon=":material/compress:"),
    st.Page("pages/distill.py", title="Distill", icon=":material/school:"),
    st.Page("pages/tradeoffs.py", title="Trade-offs", icon=":material/scatter_plot:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]

navigation = st.navigation(PAGES)
sidebar.render()
navigation.run()
