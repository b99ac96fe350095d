"""Export: not part of this version yet; says what it will do."""

import streamlit as st

from ui import navigation

navigation.inside_app()

st.title("Export")
st.info(
    "Export is not part of this version of SqueezeLab yet, so there is no model to download here.\n\n"
    "What it will do: write a compressed result as a Hugging Face folder, in the compressed-tensors format "
    "(which vLLM and transformers load) or as a GGUF file for llama.cpp, zip it for download, reload it and "
    "re-evaluate it to check that the figures survive the round trip."
)
st.caption("The recipe behind every result can already be downloaded on the Trade-offs page and rerun with "
           "`squeezelab run RECIPE.yaml`.")
