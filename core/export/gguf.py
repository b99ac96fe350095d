"""GGUF for llama.cpp / ollama, written with the ``gguf`` package: Llama, Mistral, Qwen2/3, Gemma-2/3, Phi-3, GPT-2,
GPT-NeoX, Falcon.

Block types, 32 weights per block, each with an fp16 scale ``d``:
  Q8_0  x = d * q,  q int8            Q4_0  x = d * (q - 8), q 0..15
  Q4_1  x = d * q + m, q 0..15, fp16 offset m          F16 / F32: plain floats

A SqueezeLab layer whose group size is a multiple of 32 (or one scale per row of a multiple of 32)
is written *exactly*: its codes become the block's q and its scale the block's d, so nothing is
re-rounded. Q4_0 holds symmetric codes of up to 4 bits (asymmetric up to 3), Q8_0 symmetric up to
8 bits (asymmetric up to 7), Q4_1 any codes of up to 4 bits (its offset -zero*scale rounded to fp16).
A layer a requested type cannot hold is refused with the nearest type that can, unless the export
says ``requantize: true``; then it is re-rounded from its dequantized weights by gguf's reference
quantizer, as float weights always are when a block type is asked for. Embedding and output matrices
may stay at a higher precision than asked (as llama.cpp's own files keep them).

Layout as llama.cpp's ``convert_hf_to_gguf.py`` writes it: tensor names from gguf's name map for the
family's architecture, each family's conventions (``core.export.gguf_arch``: Llama's permuted q/k rows,
Gemma's ``1 + w`` norms, GPT-2's transposed ``Conv1D`` weights, GPT-NeoX's and Falcon's fused qkv rows as
[q | k | v]), norms in F32, no ``output.weight`` when the embedding is tied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import CancelledError, SpecError
from core.export.gguf_arch import gguf_facts, tensor_name_map, transform, write_config
from core.export.gguf_vocab import vocab_for, write_vocab
from core.export.hf import WriteReport
from core.layers import Conv1D
from core.quantize.qembedding import TiedQuantEmbedding
from core.quantize.qlinear import QuantLinear
from core.quantize.scheme import QuantScheme

BLOCK_TYPES = ("Q4_0", "Q4_1", "Q8_0")  # smallest first
BLOCK = 32
_BITS = {"F32": 32.0, "F16": 16.0, "Q8_0": 8.5, "Q4_0": 4.5, "Q4_1": 5.0}


def exact_types(scheme: QuantScheme, in_features: int) -> list[str]:
    """GGUF block types that hold a layer's codes exactly, smallest first (empty: none)."""
    width = scheme.group_width(in_features)
    if width % BLOCK:
        return []
    sym, bits = scheme.symmetric, scheme.bits
    fits = {"Q4_0": bits <= (4 if sym else 3), "Q4_1": bits <= 4, "Q8_0": bits <= (8 if sym else 7)}
    return [kind for kind in BLOCK_TYPES if fits[kind]]


@dataclass(frozen=True)
class _Entry:
    """One tensor to write: its transformers name, and a QuantLinear or a float tensor."""

    name: str
    quant: QuantLinear | None = None
    tensor: torch.Tensor | None = None  # [out, in] (a GPT-2 Conv1D weight: its transposed view)
    role: str = "block"  # block | embedding | output | vector
    transposed: bool = False  # the module stores the weight as [in, out] (GPT-2's Conv1D)


def _entries(model: nn.Module) -> list[_Entry]:
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n for n, m in model.named_modules()}
    entries, taken = [], set()
    if isinstance(embedding, TiedQuantEmbedding):  # token_embd from the head's codes; no output.weight
        entries.append(_Entry(f"{names[id(embedding)]}.weight", quant=embedding.head, role="embedding"))
        taken.add(id(embedding.head))
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear) and id(module) not in taken:
            entries.append(_Entry(f"{name}.weight", quant=module, role="output" if module is head else "block"))
    quantized = {e.name for e in entries}
    for name, parameter in model.named_parameters():  # tied float weights are listed once: no output.weight
        if name in quantized:
            continue
        role = "vector" if parameter.ndim == 1 else "embedding" if parameter is getattr(embedding, "weight", None) \
            else "output" if parameter is getattr(head, "weight", None) else "block"
        transposed = parameter.ndim == 2 and _is_conv1d(model.get_submodule(name.rsplit(".", 1)[0]))
        entries.append(_Entry(name, tensor=parameter.t() if transposed else parameter, role=role,
                              transposed=transposed))
    return entries


def _is_conv1d(module: nn.Module) -> bool:
    return bool(Conv1D) and isinstance(module, Conv1D)


def _plan(entry: _Entry, requested: str, dense_default: str, requantize: bool) -> tuple[str, str]:
    """(GGUF type, how: exact | cast | dequantize | quantize | requantize) for one tensor, or SpecError."""
    if entry.role == "vector":
        return "F32", "cast"
    if entry.quant is None:
        kind = dense_default if requested == "auto" else requested
        if kind in BLOCK_TYPES and entry.tensor.shape[-1] % BLOCK:
            return "F16", "cast"
        if kind in ("Q4_0", "Q4_1") and entry.role != "block":
            return "Q8_0", "quantize"  # embedding / output above 4 bits, as llama.cpp's own files
        return kind, "quantize" if kind in BLOCK_TYPES else "cast"
    if requested in ("F32", "F16"):
        return requested, "dequantize"
    exact = exact_types(entry.quant.scheme, entry.quant.in_features)
    if requested == "auto" and exact:
        return exact[0], "exact"
    if requested in exact:
        return requested, "exact"
    if entry.role != "block" and exact:
        return exact[0], "exact"
    if requantize and requested != "auto":
        return requested, "requantize"
    raise SpecError(_inexpressible(entry, requested, exact))


def _inexpressible(entry: _Entry, requested: str, exact: list[str]) -> str:
    s = entry.quant.scheme
    group = f"g{s.group_size}" if s.group_size else "per-channel"
    what = f"{entry.name}: {s.bits}-bit {group} {'symmetric' if s.symmetric else 'asymmetric'} codes"
    nearest = (f"gguf_type {exact[0]} holds them exactly" if exact else
               f"no GGUF block type holds them exactly (blocks are {BLOCK} weights with one scale); gguf_type F16 "
               "stores the dequantized weights")
    target = requested if requested != "auto" else "Q8_0 or Q4_0"
    return (f"{what} cannot be written as {requested} without re-rounding them. Nearest: {nearest}; or set "
            f"requantize: true to re-round them to {target} (lossy); or export as format hf / compressed-tensors, "
            "which keep the scheme as it is")


def _blocks(layer: QuantLinear, kind: str) -> np.ndarray:
    """A QuantLinear's codes as GGUF blocks, exactly: uint8 [out, in / 32 * block bytes]."""
    codes = layer.codes().to(torch.int16).cpu()
    factor = layer.scheme.group_width(layer.in_features) // BLOCK
    scale = layer.scales.float().cpu().repeat_interleave(factor, dim=1)  # [out, blocks]
    zero = layer.zero_points().cpu().repeat_interleave(factor, dim=1)
    rows, blocks = scale.shape
    q = codes.reshape(rows, blocks, BLOCK)
    z = zero.to(torch.int16).unsqueeze(-1)
    d = scale.half().numpy().view(np.uint8).reshape(rows, blocks, 2)
    if kind == "Q8_0":
        body = (q - z).to(torch.int8).numpy().view(np.uint8)
    else:
        nibbles = (q - z + 8) if kind == "Q4_0" else q
        nibbles = nibbles.to(torch.uint8)
        body = (nibbles[..., :16] | (nibbles[..., 16:] << 4)).numpy()
        if kind == "Q4_1":
            offset = (-zero * scale).half().numpy().view(np.uint8).reshape(rows, blocks, 2)
            d = np.concatenate([d, offset], axis=-1)
    return np.concatenate([d, body], axis=-1).reshape(rows, -1)


def _floats(entry: _Entry) -> torch.Tensor:
    if entry.quant is not None:
        return entry.quant.dequantized_weight(torch.float32).cpu()
    return entry.tensor.detach().float().cpu()


@dataclass
class _Encoded:
    array: np.ndarray
    kind: str
    reference: torch.Tensor | None  # what the file now holds, where that differs from the model (the module's layout)


def _encode(entry: _Entry, kind: str, how: str) -> _Encoded:
    import gguf

    if how == "exact":
        return _Encoded(_blocks(entry.quant, kind), kind, None)
    values = _floats(entry).numpy()
    if kind == "F32":
        return _Encoded(values.astype(np.float32), kind, None)
    if kind == "F16":
        return _Encoded(values.astype(np.float16), kind, None)
    qtype = gguf.GGMLQuantizationType[kind]
    packed = gguf.quants.quantize(values.astype(np.float32), qtype)
    held = torch.from_numpy(gguf.quants.dequantize(packed, qtype).copy())
    return _Encoded(packed, kind, held.t().contiguous() if entry.transposed else held)  # as the module stores it


def gguf_file_name(requested: str, kinds: list[str]) -> str:
    return f"model-{requested if requested != 'auto' else _dominant(kinds)}.gguf"


def _dominant(kinds: list[str]) -> str:
    counts = {kind: kinds.count(kind) for kind in set(kinds) if kind != "F32"} or {"F32": 1}
    return max(counts, key=lambda kind: (counts[kind], -_BITS[kind]))


def plan(model: nn.Module, requested: str = "auto", requantize: bool = False) -> list[tuple[_Entry, str, str]]:
    """Every tensor with its GGUF type and how it gets there; raises SpecError before anything is written."""
    gguf_facts(model)
    has_quant = any(isinstance(m, QuantLinear) for m in model.modules())
    dtype = next(model.parameters()).dtype
    dense_default = "F32" if dtype == torch.float32 and not has_quant else "F16"
    return [(entry, *_plan(entry, requested, dense_default, requantize)) for entry in _entries(model)]


def write_gguf(model: nn.Module, tokenizer, folder: Path, requested: str = "auto", requantize: bool = False,
               cancel: Callable[[], bool] | None = None) -> WriteReport:
    """Write ``folder/model-<TYPE>.gguf``; the report's ``details['reference']`` holds re-rounded weights."""
    import gguf

    planned = plan(model, requested, requantize)
    vocab = vocab_for(tokenizer, model.config.vocab_size)
    family, facts = gguf_facts(model)
    name_map = tensor_name_map(model, facts)
    kinds = [kind for _, kind, _ in planned]
    path = folder / gguf_file_name(requested, kinds)
    writer = gguf.GGUFWriter(str(path), facts.arch)
    write_config(writer, model, family, facts)
    _write_file_type(writer, _dominant(kinds))
    write_vocab(writer, vocab)
    report = WriteReport(notes=list(vocab.notes), details={"gguf_file": path.name, "reference": {}, "types": {}})
    for entry, kind, how in planned:
        if cancel is not None and cancel():
            raise CancelledError("export cancelled while encoding GGUF tensors")
        encoded = _encode(entry, kind, how)
        target = name_map.get_name(entry.name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise SpecError(f"no GGUF tensor name for {entry.name} in llama.cpp's {facts.arch} layout; export as "
                            "format hf or compressed-tensors")
        array = transform(entry.name, encoded.array, model, family, facts)
        raw = None if kind in ("F32", "F16") else gguf.GGMLQuantizationType[kind]
        writer.add_tensor(target, np.ascontiguousarray(array), raw_dtype=raw)
        report.promised_bytes += array.nbytes
        report.details["types"][kind] = report.details["types"].get(kind, 0) + 1
        if encoded.reference is not None:
            report.details["reference"][entry.name] = encoded.reference
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _notes(report, planned)
    if facts.read_back == "squeezelab":
        report.notes.append(f"transformers' GGUF loader does not rebuild a {family.name} model faithfully: load this "
                            "file with llama.cpp or SqueezeLab (load_exported, or --model FILE.gguf)")
    return report


def _notes(report: WriteReport, planned: list[tuple[_Entry, str, str]]) -> None:
    counts: dict[tuple[str, str], int] = {}
    for _, kind, how in planned:
        counts[(how, kind)] = counts.get((how, kind), 0) + 1
    words = {"quantize": "float matrices quantized to {k} at export by gguf's reference quantizer (lossy)",
             "requantize": "quantized layers re-rounded to {k} from their dequantized weights (lossy)",
             "dequantize": "quantized layers written dequantized as {k}",
             "exact": "quantized layers written exactly as {k} (codes and scales unchanged)"}
    for (how, kind), count in sorted(counts.items()):
        if how in words:
            report.notes.append(f"{count} " + words[how].format(k=kind))
    report.lossy = any(how in ("quantize", "requantize") for _, _, how in planned)


def _write_file_type(writer, dominant: str) -> None:
    import gguf

    file_types = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "Q8_0": "MOSTLY_Q8_0", "Q4_0": "MOSTLY_Q4_0",
                  "Q4_1": "MOSTLY_Q4_1"}
    writer.add_file_type(gguf.LlamaFileType[file_types[dominant]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
