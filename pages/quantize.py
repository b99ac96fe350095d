"""Quantize: bits, groups, symmetry, method and kernel, per-layer overrides; run it in the background."""

import pandas as pd
import streamlit as st

from core import GROUP_SIZES, QuantScheme, block_linear_layers, plan_layers, weight_matrix
from ui import cache, forms, navigation, state

navigation.inside_app()

METHODS = {
    "rtn": "RTN: round to nearest (no data needed)",
    "gptq": "GPTQ: second-order, compensates rounding errors (calibration)",
    "awq": "AWQ: activation-aware scales folded into the norms, then RTN or GPTQ (calibration)",
    "int8_dynamic": "Dynamic int8: int8 weights and per-token int8 activations (integer kernel)",
    "bf16": "bf16: the whole model in bfloat16",
    "fp16": "fp16: the whole model in float16",
}
KERNELS = {
    "auto": "auto: the integer kernel where one exists, else dequantize on the fly",
    "dequant": "dequantize on the fly (any scheme, slower than dense)",
    "int4_weight_only": "int4 weight-only (4-bit, groups of 32-256)",
    "int8_weight_only": "int8 weight-only (8-bit symmetric per channel)",
}
SESSION = forms.SESSION

selection = state.selection()
st.title("Quantize")
loaded = cache.get_base(selection)
if loaded is None:
    st.stop()
st.caption(f"`{selection.model}`: every run quantizes its own copy; the loaded model is never changed.")
widths = sorted({weight_matrix(layer).shape[1] for _, layer in block_linear_layers(loaded.model)})


def group_choice() -> int | None:
    """Group size select, listing only sizes that divide every selected layer's input width."""
    valid = [g for g in GROUP_SIZES if all(w % g == 0 for w in widths)]
    options = [0, *valid]
    group = st.selectbox("Group size (input columns per scale)", options, index=min(2, len(options) - 1),
                         format_func=lambda g: "per output channel" if g == 0 else str(g), key="quant_group",
                         help=f"input widths of the layers: {', '.join(map(str, widths))}; other sizes do not "
                              "divide them", **SESSION)
    return group or None


def scheme_params(method: str) -> dict:
    """bits / group / symmetry / kernel for RTN and GPTQ."""
    left, right = st.columns(2)
    bits = left.slider("Bits per weight", 2, 8, 4, key="quant_bits", **SESSION)
    with right:
        group = group_choice()
    symmetric = left.checkbox("Symmetric (no zero point)", True, key="quant_symmetric", **SESSION)
    params = {"bits": bits, "group_size": group, "symmetric": symmetric}
    if method == "gptq":
        params["act_order"] = right.checkbox("Act-order (columns by decreasing Hessian diagonal)", True,
                                             key="quant_act_order", **SESSION)
    params["kernel"] = st.selectbox("Kernel", list(KERNELS), format_func=KERNELS.get, key="quant_kernel", **SESSION)
    width = max(widths)
    st.caption(f"Storage: {QuantScheme(bits, group, symmetric).bits_per_weight(width):.2f} bits per weight "
               "in the quantized layers, counting fp16 scales and 8-bit zero points.")
    return params


def overrides() -> list[dict]:
    """Per-layer overrides as an editable table: the first matching pattern wins."""
    st.markdown("**Per-layer overrides** (optional, first match wins; e.g. `*.self_attn.*` at 8 bits)")
    blank = pd.DataFrame({"pattern": pd.Series(dtype="str"), "bits": pd.Series(dtype="Int64"),
                          "group_size": pd.Series(dtype="Int64"), "skip": pd.Series(dtype="bool")})
    table = st.data_editor(blank, num_rows="dynamic", key="quant_overrides", hide_index=True,
                           column_config={"bits": st.column_config.NumberColumn(min_value=2, max_value=8),
                                          "group_size": st.column_config.NumberColumn(
                                              help="0: per output channel", min_value=0)})
    rows = []
    for record in table.to_dict("records"):
        if not isinstance(record.get("pattern"), str) or not record["pattern"].strip():
            continue
        row = {"pattern": record["pattern"].strip()}
        for key in ("bits", "group_size"):
            if pd.notna(record.get(key)):
                row[key] = int(record[key])
        if record.get("skip") is True:
            row["skip"] = True
        rows.append(row)
    return rows


method = st.selectbox("Method", list(METHODS), format_func=METHODS.get, key="quant_method", **SESSION)
params: dict = {"method": method}
if method in ("rtn", "gptq", "awq"):
    params.update(scheme_params(method))
    if method == "awq":
        params["rounding"] = st.radio("Then round with", ["rtn", "gptq"], horizontal=True, key="quant_awq_rounding",
                                      **SESSION)
    params["lm_head"] = st.checkbox("Also quantize lm_head (RTN)", False, key="quant_lm_head", **SESSION)
    params["overrides"] = overrides()
elif method == "int8_dynamic":
    st.caption("Weights: 8-bit symmetric, one scale per output channel, codes within ±64 so that fbgemm can "
               "take 8-bit activations without int16 overflow. Activations: int8 with one scale per token, "
               "computed at run time; the matmul runs on fbgemm's int8 kernel (CPU).")
    params["smooth"] = st.slider(
        "SmoothQuant strength α (0 = off)", 0.0, 0.9, 0.5, 0.05, key="quant_smooth",
        help="Moves activation outliers into the weights (exactly, before quantizing) so one int8 range per "
             "token fits every channel; uses the calibration text. 0.5 is the paper's default.", **SESSION)
    params["lm_head"] = st.checkbox("Also quantize lm_head (int8; a tied input embedding reads its rows)", True,
                                    key="quant_lm_head_int8", **SESSION)


def check_layers(spec) -> None:  # noqa: ANN001 - a QuantizeSpec
    if spec.method not in ("fp16", "bf16"):
        plan_layers(loaded.model, spec)  # a group size that does not divide a layer is refused here


params = {key: value for key, value in params.items() if value not in (None, [])}
recipe = forms.one_step_recipe(selection, loaded, "quantize", params, lambda spec: spec.uses_calibration, check_layers)
forms.recipe_and_run(recipe, loaded, selection)
