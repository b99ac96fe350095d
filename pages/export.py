"""Export: a stored result as an HF folder, compressed-tensors or GGUF, reloaded and checked, then downloaded.

The export reruns the result's recipe in the background worker (the store keeps recipes, not models) with an
``export:`` section: the model is written into the result's artifact folder, reloaded from disk, re-evaluated,
and zipped there. The download button reads the zip from disk only when clicked (see ``download``).
"""

import os
from pathlib import Path

import streamlit as st
import yaml

from core import FORMATS, GGUF_TYPES, ExportSpec, Recipe, ResultRow
from ui import cache, jobs, navigation, state
from ui.errors import shown

navigation.inside_app()

FORMAT_LABELS = {
    "hf": "Hugging Face folder (safetensors; quantized or sparse weights kept as SqueezeLab stores them)",
    "compressed-tensors": "compressed-tensors (llm-compressor's format: transformers and vLLM load it)",
    "gguf": "GGUF (llama.cpp, ollama; Llama, Mistral, Qwen2/3, Gemma-2/3, Phi-3, GPT-2, GPT-NeoX, Falcon)",
}
GGUF_LABELS = {"auto": "auto: the exact block type of each quantized layer", "F32": "F32", "F16": "F16",
               "Q8_0": "Q8_0 (8-bit, blocks of 32)", "Q4_0": "Q4_0 (4-bit symmetric, blocks of 32)",
               "Q4_1": "Q4_1 (4-bit with offset, blocks of 32)"}
SPARSE = {"auto": "where it is smaller", "always": "always", "never": "never (dense)"}
# Streamlit (1.67) holds a download's bytes in server memory while it is served; bigger zips are offered by path.
DOWNLOAD_LIMIT_BYTES = int(float(os.environ.get("SQUEEZELAB_DOWNLOAD_LIMIT_MB", "1024")) * 1e6)


def label(row: ResultRow) -> str:
    method = (row.details or {}).get("method", "base")
    exported = (row.details or {}).get("export")
    done = f" · exported as {exported['format']}" if exported else ""
    ppl = f" · ppl {row.perplexity:.3f}" if row.perplexity is not None else ""
    return f"{row.id} · {row.model} · {method}{ppl}{done}"


@st.cache_data(show_spinner="Checking which formats this model can be written in...", max_entries=8)
def format_reasons(ref: str, device: str, dtype: str, allow_pickle: bool = False,
                   trust_remote_code: bool = False) -> dict[str, str | None]:
    """None per format the model's architecture and tokenizer can be written in, else the reason."""
    from core import writable_formats

    loaded = cache.load_base(ref, device, dtype, allow_pickle, trust_remote_code)
    return writable_formats(loaded.model, loaded.tokenizer)


def export_options(reasons: dict[str, str | None]) -> dict:
    """The ``export:`` mapping the widgets describe."""
    usable = [name for name in FORMATS if reasons.get(name) is None]
    fmt = st.radio("Format", usable, format_func=FORMAT_LABELS.get, key="export_format")
    for name, reason in reasons.items():
        if reason:
            st.caption(f"{name} is not offered for this model: {reason}")
    options: dict = {"format": fmt, "zip": True}
    if fmt == "gguf":
        left, right = st.columns(2)
        options["gguf_type"] = left.selectbox("GGUF type", GGUF_TYPES, format_func=GGUF_LABELS.get,
                                              key="export_gguf_type")
        options["requantize"] = right.checkbox(
            "Re-round layers the type cannot hold exactly (lossy)", False, key="export_requantize",
            help="Without it, a layer whose codes the type cannot hold (e.g. 8-bit into Q4_0) is refused with the "
                 "nearest type that can.")
    if fmt == "hf":
        choice = st.selectbox("Store pruned weights sparse (bitmask + non-zero values)", list(SPARSE),
                              format_func=SPARSE.get, key="export_sparse")
        options["sparse"] = {"auto": "auto", "always": True, "never": False}[choice]
    options["check_windows"] = int(st.number_input("Windows scored before export and after reload", 1, 64, 4,
                                                   key="export_check_windows"))
    return options


def download(zip_path: Path) -> None:
    """The "Download zip" button: the file is read from disk only when clicked (never at a rerun)."""
    size = zip_path.stat().st_size
    if size > DOWNLOAD_LIMIT_BYTES:
        st.info(f"The zip is {size / 1e6:,.0f} MB, above the in-app download limit "
                f"({DOWNLOAD_LIMIT_BYTES / 1e6:,.0f} MB, env SQUEEZELAB_DOWNLOAD_LIMIT_MB): Streamlit would hold all "
                f"of it in server memory while serving it. Copy it from `{zip_path}` instead.")
        return
    st.download_button("Download zip", data=zip_path.read_bytes,
                       file_name=zip_path.name, mime="application/zip", on_click="ignore", type="primary",
                       key=f"export_download_{zip_path.parent.name}")


def show_export(row: ResultRow) -> None:
    """Size, the reload check and the download of the export a result row describes."""
    export = (row.details or {}).get("export")
    if not export:
        return
    cols = st.columns(4)
    cols[0].metric("Artifact on disk", f"{export['size_bytes'] / 1e6:,.2f} MB",
                   delta=f"weights {export['weights_bytes'] / 1e6:,.2f} MB", **jobs.NEUTRAL)
    passed = export.get("check_passed")
    cols[1].metric("Reload check", "passed" if passed else "FAILED",
                   delta=f"{export['windows']} windows x {export['seqlen']} tokens", **jobs.NEUTRAL)
    cols[2].metric("Perplexity before export", f"{export['perplexity_before']:.4f}")
    cols[3].metric("Perplexity after reload", f"{export['perplexity_after']:.4f}",
                   delta=f"{100 * (export['perplexity_after'] / export['perplexity_before'] - 1):+.3f}%",
                   delta_color="inverse")
    (st.success if passed else st.error)(
        f"{export['format']} at `{export['path']}`: reloaded from disk "
        + ("and re-evaluated within the tolerance" if passed else "but the check failed")
        + f" ({100 * export['tolerance']:.2f}%); tokenizer "
        + ("identical" if export.get("tokenizer_match") else "DIFFERENT")
        + f". Written in {export['export_s']:.1f} s, reloaded in {export['reload_s']:.1f} s.")
    for note in export.get("notes") or []:
        st.caption(note)
    zip_path = Path(export["zip_path"]) if export.get("zip_path") else None
    if zip_path is not None and zip_path.is_file():
        download(zip_path)
    elif zip_path is not None:
        st.warning(f"The zip {zip_path} is no longer on disk (deleted?); export the result again.")


def job_extra(job: jobs.Job) -> None:
    if job.status == "done" and job.result_id:
        row = cache.store_at(job.results_dir).get(job.result_id)
        if (row.details or {}).get("export"):
            show_export(row)


st.title("Export")
st.caption("A stored result written as a Hugging Face folder, compressed-tensors or GGUF: its recipe is run again, "
           "the model is written, reloaded from disk the way a user loads it, re-evaluated on a few windows, and "
           "zipped. Size is the artifact's bytes on disk.")
store = cache.results_store()
rows = store.list("ok")
if not rows:
    st.info("No finished results yet: run something on the Prune, Quantize or Distill page (or measure a model), "
            "then export it here.")
    st.stop()
by_id = {row.id: row for row in rows}
picked = by_id[st.selectbox("Result", list(by_id), format_func=lambda i: label(by_id[i]), key="export_result")]
if (picked.details or {}).get("export"):
    st.markdown("**This result is an export**")
    show_export(picked)
    st.divider()
recipe = Recipe.from_dict(yaml.safe_load(picked.recipe))
device, dtype = recipe.device or "auto", recipe.dtype or "auto"
opted_in = [name for name, given in recipe.load_options.items() if given]
if opted_in:
    st.caption(f":warning: This result's recipe opts in to {' and '.join(opted_in)} (chosen when it ran); the export "
               "loads the model the same way.")
reasons = None
with shown(f"Cannot load model {recipe.model!r}"):
    reasons = format_reasons(recipe.model, device, dtype, **recipe.load_options)
if reasons is not None:
    if all(reasons.values()):
        st.error("This model cannot be written in any format: " + "; ".join(f"{k}: {v}" for k, v in reasons.items()))
        st.stop()
    options = export_options(reasons)
    spec = None
    with shown("These export settings cannot run"):
        spec = ExportSpec.from_dict(options)
    if spec is not None:
        recipe = Recipe.from_dict({**recipe.to_dict(), "export": spec.as_dict()})
        with st.expander("Recipe"):
            st.code(recipe.to_yaml(), language="yaml")
        if st.button("Export", type="primary"):
            base = cache.load_base(recipe.model, device, dtype, **recipe.load_options)
            state.remember_job(jobs.submit(recipe, base))
jobs.job_panel(extra=job_extra)
