"""Recovery of a quantized student: it trains through its own grid, with straight-through gradients.

A ``QuantLinear`` holds integer codes, which no gradient can move, so a quantized model handed to
distillation as ``student: self`` would train only its embeddings and norms. For training, each
quantized layer of the decoder blocks is swapped for a ``FakeQuantLinear``: an fp32 latent weight,
initialised to the dequantized weight, that the forward pass rounds to the layer's grid (its stored
scales and zero points, held fixed) while the backward pass hands the gradient to the latent weight
unchanged (the straight-through estimator, as in quantization-aware training). At the start the
rounding gives back exactly the stored codes, so training starts from the quantized model itself; at
the end the latent weights are rounded once more and packed into a ``QuantLinear`` with the same
scheme, scales and kernel, so the model leaves training quantized, as it came.

Only weights move; activations are not fake-quantized (``int8_dynamic`` layers train with float
activations and quantize them again at run time). A quantized ``lm_head`` (and an input embedding
tied to it) stays as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import QuantizedMatrix, QuantScheme, quantize_codes


class FakeQuantLinear(nn.Linear):
    """Training stand-in for a ``QuantLinear``: a latent fp32 weight seen through the layer's fixed grid.

    A subclass of ``nn.Linear`` so the block walks (``core.layers``) see it as the linear layer it is.
    """

    def __init__(self, layer: QuantLinear) -> None:
        nn.Module.__init__(self)  # nn.Linear.__init__ would allocate and initialise a weight of its own
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.scheme: QuantScheme = layer.scheme
        self.kernel = layer.kernel
        self.bias = layer.bias  # trained (or not) as it was: QuantLinear keeps it frozen
        self.bias_dtype = layer.bias.dtype if layer.bias is not None else torch.float32
        self.register_buffer("scale", layer.scales.float())  # [out, groups]: the stored fp16 scales
        self.register_buffer("zero", layer.zero_points())  # [out, groups]
        self.weight = nn.Parameter(layer.dequantized_weight(torch.float32))

    def rounded_weight(self) -> torch.Tensor:
        """The weight the packed layer would hold: forward value rounded, gradient straight through."""
        latent = self.weight
        groups = self.scale.shape[1]
        scale, zero = self.scale.unsqueeze(2), self.zero.unsqueeze(2)  # [out, groups, 1]
        grouped = latent.detach().view(self.out_features, groups, -1)
        codes = torch.round(grouped / scale).add_(zero).clamp_(*self.scheme.code_bounds())
        rounded = ((codes - zero) * scale).view_as(latent)
        return latent + (rounded - latent.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rounded_weight().to(x.dtype), self.bias)

    def packed(self) -> QuantLinear:
        """A QuantLinear holding the latent weights rounded to the grid (same scheme, scales, kernel)."""
        codes = quantize_codes(self.weight.detach(), self.scale, self.zero, self.scheme)
        matrix = QuantizedMatrix(codes, self.scale, self.zero)
        layer = QuantLinear.from_matrix(matrix, self.scheme, self.bias, self.bias_dtype)
        if self.kernel != "dequant":
            layer.use_kernel(self.kernel)
        return layer


def fake_quantize_(model: nn.Module) -> list[str]:
    """Swap every QuantLinear except the output projection for a FakeQuantLinear; returns their names."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = [name for name, module in model.named_modules() if isinstance(module, QuantLinear) and module is not head]
    for name in names:
        model.set_submodule(name, FakeQuantLinear(model.get_submodule(name)))
    return names


def repack_(model: nn.Module, names: list[str]) -> None:
    """Pack the FakeQuantLinear layers ``names`` back into QuantLinear layers (in place)."""
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, FakeQuantLinear):
            model.set_submodule(name, layer.packed())
