"""The integer kernels behind QuantLinear pack their weights once, when chosen, and never on a call."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.quantize import QuantizeSpec, quantize_
from core.quantize.kernels import kernel_unavailable
from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import QuantScheme
from tests.helpers import tiny_causal_lm

PACKING_OPS = {"_convert_weight_to_int4pack_for_cpu", "_convert_weight_to_int4pack", "linear_prepack"}


COPYING_OPS = {"to", "_to_copy", "copy_", "clone", "cat", "stack", "contiguous"}


class _OpLog(TorchDispatchMode):
    """Every aten op a block of code runs, with the sizes of its tensor arguments, and the copies made."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[int]]] = []
        self.copies: list[tuple[str, int]] = []  # (op, elements copied)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((name, [t.numel() for t in tensors]))
        out = func(*args, **(kwargs or {}))
        if name in COPYING_OPS and not (tensors and out is tensors[0]):  # ``.to`` of the same dtype returns its input
            self.copies.append((name, out.numel()))
        return out


def _layer(kernel: str, spec: dict) -> QuantLinear:
    model = tiny_causal_lm("llama")
    quantize_(model, QuantizeSpec(**spec, kernel=kernel))
    layer = model.model.layers[0].mlp.up_proj
    assert isinstance(layer, QuantLinear) and layer.kernel == kernel
    return layer


@pytest.mark.parametrize("kernel,spec,matmul", [
    ("int8_weight_only", {"method": "rtn", "bits": 8}, "_weight_int8pack_mm"),
    ("int4_weight_only", {"method": "rtn", "bits": 4, "group_size": 32, "symmetric": False},
     "_weight_int4pack_mm_for_cpu"),
])
def test_weight_only_kernels_touch_only_the_activations_on_a_call(kernel, spec, matmul):
    layer = _layer(kernel, spec)
    x = torch.randn(1, layer.in_features, dtype=torch.bfloat16)  # a bf16 model: nothing to convert at all
    with torch.inference_mode(), _OpLog() as log:
        layer(x)
    names = [name for name, _ in log.calls]
    assert matmul in names and not PACKING_OPS & set(names)
    # no copy or conversion of the weights, their scales or packed form (nor of the bf16 activations)
    assert log.copies == []


def test_float32_activations_are_the_only_conversion():
    layer = _layer("int4_weight_only", {"method": "rtn", "bits": 4, "group_size": 32})
    x = torch.randn(1, layer.in_features)
    with torch.inference_mode(), _OpLog() as log:
        layer(x)
    # in: the activations to bf16; out: the result back to float32; the scales were packed in bf16 once
    assert sorted(elements for _, elements in log.copies) == sorted([layer.in_features, layer.out_features])


def test_the_cpu_int4_kernel_needs_rows_in_sixteens():
    cpu = torch.device("cpu")
    assert "multiple of 16" in kernel_unavailable("int4_weight_only", QuantScheme(4, 32), 64, cpu, out_features=300)
    assert kernel_unavailable("int4_weight_only", QuantScheme(4, 32), 64, cpu, out_features=320) is None
