"""SqueezeLab's compression engine: a plain Python library (never imports streamlit)."""

__version__ = "0.1.0"
