"""Weight quantization: RTN, GPTQ, dynamic int8 (with SmoothQuant), fp16/bf16 casts.

* ``spec``         - ``QuantizeSpec``: method, bits, groups, kernel, per-layer overrides (validated).
* ``scheme``       - pure tensor math: grids, scales, RTN, bit packing, error metrics.
* ``gptq``         - GPTQ on one matrix (pure; the OBS column sweep of ``core.calibration.hessian``).
* ``smooth``       - SmoothQuant: fold activation outliers into the weights, exactly.
* ``qlinear``      - ``QuantLinear``: packed codes, fp16 scales, and a kernel that runs them.
* ``kernels``      - the integer matmul kernels as tensor functions, and where each can run.
* ``kernel_choice``- which kernel each layer of a model runs.
* ``qembedding``   - an input embedding tied to a quantized ``lm_head`` (stored once).
* ``apply``        - ``quantize_``: plan, walk the blocks, swap in ``QuantLinear``.
* ``step``         - ``QuantizeStep``: the recipe step.
"""

from core.quantize.apply import QuantLayerReport, QuantReport, plan_layers, quantize, quantize_
from core.quantize.gptq import gptq_quantize
from core.quantize.kernel_choice import choose_kernels, kernel_summary
from core.quantize.kernels import FBGEMM_SAFE_RADIUS, KERNELS, kernel_unavailable
from core.quantize.qembedding import TiedQuantEmbedding
from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import (
    BITS_RANGE,
    GROUP_SIZES,
    QuantizedMatrix,
    QuantScheme,
    dequantize_codes,
    fake_quantize,
    pack_codes,
    packed_columns,
    qparams,
    quantize_codes,
    relative_mse,
    rtn_quantize,
    sqnr_db,
    unpack_codes,
)
from core.quantize.spec import METHODS, Override, QuantizeSpec

__all__ = [
    "BITS_RANGE", "FBGEMM_SAFE_RADIUS", "GROUP_SIZES", "KERNELS", "METHODS", "Override", "QuantLayerReport",
    "QuantLinear", "QuantReport", "QuantScheme", "QuantizeSpec", "QuantizedMatrix", "TiedQuantEmbedding",
    "choose_kernels", "dequantize_codes", "fake_quantize", "gptq_quantize", "kernel_summary", "kernel_unavailable",
    "pack_codes", "packed_columns", "plan_layers", "qparams", "quantize", "quantize_", "quantize_codes",
    "relative_mse", "rtn_quantize", "sqnr_db", "unpack_codes",
]
