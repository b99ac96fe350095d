"""Distill: not part of this version yet; says what it will do."""

import streamlit as st

from ui import navigation

navigation.inside_app()

st.title("Distill")
st.info(
    "Distillation is not part of this version of SqueezeLab yet, so there is nothing to run here.\n\n"
    "What it will do: train a smaller or compressed student to match a teacher (the base model or another "
    "model reference) with a temperature-scaled KL loss mixed with the next-token loss, for a set number "
    "of steps and a learning rate, with a live loss curve, progress and cancel. A common use is to recover "
    "the quality a pruned or quantized model lost."
)
st.caption("Pruning already offers a short recovery fine-tune (Prune page, \"Recovery fine-tune steps\").")
