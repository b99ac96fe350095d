"""Exact bytes of each option, as SqueezeLab stores it (``core.export.hf``, ``core.evaluate.size``).

* a quantized layer (``QuantLinear``): codes packed ``rows x ceil(cols * bits / 8)`` (8 bits: one int8 a
  code), fp16 scales ``rows x groups``, uint8 zero points ``rows x groups`` when asymmetric;
* a pruned layer in the HF export: a bitmask ``ceil(numel / 8)`` plus the non-zero values, or the dense
  matrix where that is not smaller (``core.models.sparse.worth_sparse``); in memory it stays dense;
* everything outside the plan (embeddings, norms, biases, layers not planned): as the state dict holds them
  in memory (and an export with ``dtype: fp32`` writes them), a tied tensor once, floats in the model's dtype;
  a quantized fp32 model's default export writes them in 16 bits, so its artifact is smaller still.

A quantized layer takes the same bytes in memory (``kernel: dequant``) and in the export's
``squeezelab.safetensors``; the file adds its JSON header, and the folder its config and tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.models.sparse import sparse_bytes
from core.plan.menu import Menu, Option
from core.prune.masks import fraction_count
from core.quantize.scheme import packed_columns

SCALE_BYTES = 2  # fp16
ZERO_BYTES = 1  # uint8


@dataclass(frozen=True)
class LayerShape:
    """A planned layer: its name and weight shape [rows = out, cols = in]."""

    name: str
    rows: int
    cols: int

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def quantized_bytes(rows: int, cols: int, option: Option) -> int:
    """Bytes of a QuantLinear's codes, scales and zero points (its bias is counted apart)."""
    groups = cols // (option.group_size or cols)
    codes = rows * (cols if option.bits == 8 else packed_columns(cols, option.bits))
    return codes + rows * groups * (SCALE_BYTES + (0 if option.symmetric else ZERO_BYTES))


def kept_weights(rows: int, cols: int, sparsity: float, method: str) -> int:
    """Weights left non-zero: Wanda drops round(s * cols) in every row; magnitude and SparseGPT round(s * numel)."""
    if method == "wanda":
        return rows * (cols - fraction_count(sparsity, cols))
    return rows * cols - fraction_count(sparsity, rows * cols)


def pruned_bytes(rows: int, cols: int, nonzero: int, element_size: int) -> int:
    """Bytes of a pruned matrix in the HF export: the sparse form where it is smaller, else dense."""
    dense = rows * cols * element_size
    sparse = sparse_bytes(rows * cols, nonzero, element_size)
    return sparse if sparse < dense else dense


def option_cells(layer: LayerShape, option: Option, method: str, element_size: int) -> tuple[int, int]:
    """(stored bytes, non-zero weights) of ``layer`` under ``option``."""
    if option.bits is not None:
        return quantized_bytes(layer.rows, layer.cols, option), layer.numel
    nonzero = kept_weights(layer.rows, layer.cols, option.sparsity, method)
    if option.sparsity == 0:
        return layer.numel * element_size, layer.numel
    return pruned_bytes(layer.rows, layer.cols, nonzero, element_size), nonzero


def size_table(layers: list[LayerShape], menu: Menu, element_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, non-zeros), each [layers, options] int64, for every layer under every option of ``menu``."""
    cells = [[option_cells(layer, option, menu.method, element_size) for option in menu.options] for layer in layers]
    table = np.array(cells, dtype=np.int64).reshape(len(layers), len(menu.options), 2)
    return table[..., 0], table[..., 1]


def fixed_bytes(model: nn.Module, planned: list[str]) -> int:
    """Bytes of every stored tensor the plan does not choose: the state dict as the export writes it
    (a tied tensor once, floats in the model's dtype), less the planned layers' weights."""
    dtype = next(model.parameters()).dtype
    skip = {f"{name}.weight" for name in planned}
    seen, total = set(), 0
    for name, tensor in model.state_dict(keep_vars=True).items():
        key = _storage_key(tensor)
        if key is not None and key in seen:
            continue
        seen.add(key)
        if name in skip:
            continue
        element = torch.empty(0, dtype=dtype).element_size() if tensor.is_floating_point() \
            and not name.endswith(".scales") else tensor.element_size()
        total += tensor.numel() * element
    return total


def _storage_key(tensor: torch.Tensor) -> tuple | None:
    """What a tied tensor shares with its twin: its memory, or on the meta device (no memory: every
    address is 0) the parameter object itself, which ``tie_weights`` shares."""
    if not tensor.numel():
        return None
    if tensor.is_meta:
        return ("meta", id(tensor))
    return (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype)


def element_size(model: nn.Module) -> int:
    """Bytes per float weight as the model stores it (the export's dtype when ``dtype: auto``)."""
    return next(model.parameters()).element_size()
