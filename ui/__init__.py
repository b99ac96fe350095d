"""Streamlit glue shared by the pages: session state, cached loaders, the job worker, charts.

This package is the only place that touches ``st.session_state`` and Streamlit's caches; ``core``
never imports Streamlit, and the pages only collect parameters and render.
"""
