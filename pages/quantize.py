"""Quantize: not part of this version yet; says what it will do."""

import streamlit as st

from ui import navigation

navigation.inside_app()

st.title("Quantize")
st.info(
    "Quantization is not part of this version of SqueezeLab yet, so there is nothing to run here.\n\n"
    "What it will do: round the decoder blocks' linear weights to 8, 4, 3 or 2 bits, with round-to-nearest "
    "or GPTQ (calibrated, error-compensating), per channel or in groups of 32-128 weights, symmetric or not, "
    "plus dynamic int8 for the CPU. The weights are stored packed, so the size you see is the size on disk, "
    "and every result names the kernel that really ran, so a simulated model is never shown as faster than it is."
)
st.caption("Meanwhile, the Prune page compresses models and the Trade-offs page compares the results.")
