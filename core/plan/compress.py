"""One layer's weight under one option of a menu, as the step would compute it: pure tensor functions.

Each option is solved on the layer alone with the statistics of the dense model's inputs (the atlas
changes one layer at a time): RTN and magnitude need none; GPTQ and SparseGPT use H; Wanda uses the
input norms; AWQ searches the scales of the layer on its own and returns ``Q(W diag(s)) diag(s)^-1``,
the weight the folded layer computes with. GPTQ runs with the step's defaults (act-order, blocks of
128, damping 0.01).
"""

from __future__ import annotations

import torch

from core.calibration.hessian import HessianAccumulator
from core.plan.menu import Option
from core.prune.masks import row_mask, unstructured_mask, wanda_scores
from core.prune.sparsegpt import sparsegpt_prune
from core.quantize.awq import search_scales
from core.quantize.gptq import gptq_quantize
from core.quantize.scheme import QuantizedMatrix, QuantScheme, rtn_quantize

NEEDS_STATISTICS = ("gptq", "awq", "wanda", "sparsegpt")


def scheme_of(option: Option) -> QuantScheme:
    """The quantization scheme of a bits option."""
    return QuantScheme(option.bits, option.group_size, option.symmetric)


def _stored(matrix: QuantizedMatrix) -> torch.Tensor:
    """The dequantized weight with fp16 scales, as the packed layer holds it."""
    return QuantizedMatrix(matrix.codes, matrix.scale.half().float(), matrix.zero).dequantize()


def quantized_weight(weight: torch.Tensor, option: Option, method: str,
                     stats: HessianAccumulator | None) -> torch.Tensor:
    """``weight`` [out, in] (float32) rounded as ``method`` (rtn | gptq | awq) rounds it under ``option``."""
    scheme = scheme_of(option)
    if method == "gptq":
        return _stored(gptq_quantize(weight, stats.hessian, scheme, act_order=True))
    if method == "awq":
        search = search_scales([weight], [scheme], stats)
        s = search.scales.to(weight.device)
        return _stored(rtn_quantize(weight * s, scheme)) / s if search.ratio is not None else \
            _stored(rtn_quantize(weight, scheme))
    return _stored(rtn_quantize(weight, scheme))


def pruned_weight(weight: torch.Tensor, option: Option, method: str,
                  stats: HessianAccumulator | None) -> torch.Tensor:
    """``weight`` [out, in] (float32) pruned by ``method`` (magnitude | wanda | sparsegpt) to ``option.sparsity``."""
    sparsity = option.sparsity
    if method == "sparsegpt":
        return sparsegpt_prune(weight, stats.hessian, sparsity)[0]
    if method == "wanda":
        return weight * row_mask(wanda_scores(weight, stats.act_norm), sparsity)
    return weight * unstructured_mask(weight.abs(), sparsity)


def compressed_weight(weight: torch.Tensor, option: Option, method: str,
                      stats: HessianAccumulator | None) -> torch.Tensor:
    """``weight`` under ``option``: quantized when the option has bits, else pruned."""
    weight = weight.detach().float()
    if option.bits is not None:
        return quantized_weight(weight, option, method, stats)
    return pruned_weight(weight, option, method, stats)
