"""Sparse storage of pruned weights: a bitmask of the non-zeros plus the non-zero values.

A pruned matrix stored densely is as large as the dense one. Stored as one bit per weight
(``np.packbits`` order: row-major, most significant bit first) plus the values where the bit is
set, a matrix of density d in b bytes per value takes ``numel / 8 + d * numel * b`` bytes instead of
``numel * b``: smaller whenever d < 1 - 1 / (8 b), i.e. below ~97% density in fp32 and ~94% in fp16.
compressed-tensors dropped its sparse formats, so SqueezeLab's own folder format carries this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MASK_SUFFIX = ".sparse_mask"
VALUES_SUFFIX = ".sparse_values"


@dataclass(frozen=True)
class SparseTensor:
    """A tensor as a packed bitmask (uint8 [ceil(numel / 8)]) and its non-zero values (1-D)."""

    mask: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.mask.numel() + self.values.numel() * self.values.element_size()


def dense_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def sparse_bytes(numel: int, nonzero: int, element_size: int) -> int:
    """Bytes of the sparse form of a tensor with ``numel`` entries, ``nonzero`` of them non-zero."""
    return (numel + 7) // 8 + nonzero * element_size


def worth_sparse(tensor: torch.Tensor) -> bool:
    """True when the sparse form of ``tensor`` is smaller than the dense one."""
    nonzero = int(torch.count_nonzero(tensor))
    return sparse_bytes(tensor.numel(), nonzero, tensor.element_size()) < dense_bytes(tensor)


def to_sparse(tensor: torch.Tensor) -> SparseTensor:
    """Bitmask + non-zero values of ``tensor`` (any shape; values keep its dtype)."""
    flat = tensor.detach().reshape(-1).cpu()
    keep = flat != 0
    mask = torch.from_numpy(np.packbits(keep.numpy()))
    return SparseTensor(mask, flat[keep].contiguous(), tuple(tensor.shape))


def from_sparse(mask: torch.Tensor, values: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The dense tensor a bitmask and values stand for (zeros where the bit is clear)."""
    numel = int(np.prod(shape)) if shape else 1
    keep = torch.from_numpy(np.unpackbits(mask.cpu().numpy(), count=numel).astype(bool))
    if int(keep.sum()) != values.numel():
        raise ValueError(f"sparse tensor of shape {list(shape)}: the mask sets {int(keep.sum())} bits but "
                         f"{values.numel()} values are stored; the file is damaged")
    dense = torch.zeros(numel, dtype=values.dtype)
    dense[keep] = values.cpu()
    return dense.reshape(shape)
