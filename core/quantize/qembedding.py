"""``TiedQuantEmbedding``: an input embedding that reads its rows from the quantized ``lm_head``.

Most small causal LMs tie the input embedding to the output projection (one [vocab, hidden]
matrix, often a fifth of all weights). When ``lm_head`` becomes a ``QuantLinear``, leaving the
input embedding as the old float tensor would keep a full-precision copy of that matrix; this
module keeps the tie instead: token ids gather rows of the head's codes, scales and zero points,
and only those rows are dequantized. It holds no tensors of its own, so the matrix is stored
(and counted by ``core.evaluate.size.measure_size``) once, as the head's packed codes.

It keeps the replaced embedding's semantics: Gemma's embedding module multiplies the rows it hands out
by sqrt(hidden) (its ``embed_scale``; ``core.architectures`` lists the families that do), while the
head reads the same matrix unscaled, so the tied replacement scales its rows by the same factor.
"""

from __future__ import annotations

import torch
from torch import nn

from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import dequantize_codes, unpack_codes


class TiedQuantEmbedding(nn.Module):
    """Embedding rows = dequantized rows of ``head`` (a QuantLinear [vocab, hidden])."""

    def __init__(self, head: QuantLinear, padding_idx: int | None = None, dtype: torch.dtype = torch.float32,
                 embed_scale: float = 1.0) -> None:
        super().__init__()
        self.embed_scale = float(embed_scale)  # what the replaced embedding multiplied its rows by
        # A plain attribute, not a submodule: registered twice, named_modules() would list the head
        # under this module's name and hide the name ``lm_head`` that quantization configs use.
        object.__setattr__(self, "head", head)
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.padding_idx = padding_idx
        # empty, but follows .to(dtype) / .to(device): the dtype and device of the rows handed out
        self.register_buffer("probe", torch.empty(0, dtype=dtype, device=head.scales.device), persistent=False)
        # Unpacked codes [vocab, hidden] uint8, kept only while the head's kernel holds its weights
        # in a layout rows cannot be gathered from (fbgemm, int4pack): a second copy, so it is counted.
        self.register_buffer("row_codes", torch.empty(0, dtype=torch.uint8, device=head.scales.device),
                             persistent=False)
        self._row_codes_kernel: str | None = None

    # Counted by core.evaluate.measure_size as a packed module: its weights are the head's, its
    # bytes are ``row_codes`` when that copy exists.
    logical_params = 0
    logical_nonzero = 0

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(self.head.scales.device)
        rows = dequantize_codes(self._codes(flat), self.head.scales[flat].float(),
                                self.head.zero_points()[flat], self.probe.dtype)
        if self.embed_scale != 1.0:  # in the rows' dtype, as the replaced module multiplies
            rows = rows * torch.tensor(self.embed_scale, dtype=rows.dtype, device=rows.device)
        return rows.reshape(*ids.shape, self.embedding_dim).to(self.probe.device)

    def _codes(self, flat: torch.Tensor) -> torch.Tensor:
        head = self.head
        if self._row_codes_kernel != head.kernel:
            self.follow_head_kernel()
        if self.row_codes.numel():
            return self.row_codes[flat]
        if head.scheme.bits == 8:
            return (head.qweight[flat].to(torch.int16) + 128).to(torch.uint8)
        return unpack_codes(head.qweight[flat], head.scheme.bits, head.in_features)  # packed rows are independent

    def follow_head_kernel(self) -> None:
        """Keep (or drop) the gatherable copy of the codes to match the head's current kernel."""
        head = self.head
        kernel_layout = head.qweight.numel() == 0
        self.row_codes = head.codes() if kernel_layout else self.row_codes.new_empty(0)
        self._row_codes_kernel = head.kernel

    @property
    def weight(self) -> torch.Tensor:
        """The whole dequantized matrix [vocab, hidden] (for code that reads ``embedding.weight``)."""
        return self.head.dequantized_weight(self.probe.dtype)

    def extra_repr(self) -> str:
        scaled = f", rows x {self.embed_scale:g}" if self.embed_scale != 1.0 else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, tied to a {self.head.scheme.bits}-bit lm_head{scaled}"


def embeddings_tied(model: nn.Module) -> bool:
    """Whether the model's input embedding and output projection share one weight tensor."""
    get_in, get_out = getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)
    if get_in is None or get_out is None:
        return False
    embedding, head = get_in(), get_out()
    if isinstance(embedding, TiedQuantEmbedding):
        return embedding.head is head
    return (embedding is not None and head is not None and getattr(head, "weight", None) is not None
            and getattr(embedding, "weight", None) is head.weight)


def tie_quantized_embedding_(model: nn.Module, head: QuantLinear) -> bool:
    """Make the input embedding read from the quantized ``head``; True when the model has one to tie."""
    embedding = model.get_input_embeddings()
    if not isinstance(embedding, nn.Embedding):
        return False
    tied = TiedQuantEmbedding(head, embedding.padding_idx, embedding.weight.dtype, embedding_scale(embedding))
    model.set_input_embeddings(tied)
    return True


def embedding_scale(embedding: nn.Module) -> float:
    """The factor an embedding module multiplies its rows by in its own forward (Gemma's ``embed_scale``,
    sqrt(hidden)); 1.0 for a plain ``nn.Embedding``."""
    # the plain number first: a model built without its init (a reloaded export) may hold an unset buffer
    scale = getattr(embedding, "scalar_embed_scale", None)
    scale = getattr(embedding, "embed_scale", 1.0) if scale is None else scale
    if isinstance(scale, torch.Tensor):  # a model on the meta device (checks before loading) has no value
        return 1.0 if scale.is_meta else float(scale.item())
    return float(scale)


class ScaledEmbedding(nn.Embedding):
    """A frozen ``nn.Embedding`` of ``weight`` whose rows are multiplied by ``embed_scale`` (1.0: a plain one), for
    code that stands a dense matrix in for a ``TiedQuantEmbedding`` and must keep the family's semantics."""

    def __init__(self, weight: torch.Tensor, padding_idx: int | None = None, embed_scale: float = 1.0) -> None:
        super().__init__(weight.shape[0], weight.shape[1], padding_idx=padding_idx, _weight=weight, _freeze=True)
        self.embed_scale = float(embed_scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = super().forward(ids)
        return rows if self.embed_scale == 1.0 else rows * torch.tensor(self.embed_scale, dtype=rows.dtype)
