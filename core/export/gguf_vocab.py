"""A tokenizer as GGUF metadata: what llama.cpp and transformers' GGUF loader rebuild it from.

A GGUF file carries no ``tokenizer.json``; the vocabulary, merges, token types, special token ids
and the name of the pre-tokenizer go in ``tokenizer.ggml.*`` keys. Byte-level BPE tokenizers
(GPT-2, SmolLM, Llama 3, Qwen2 style: ``tokenizer.ggml.model = gpt2``) are written; others are
refused with a message, because a wrong tokenizer silently ruins every figure measured after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from core.data import added_bos
from core.errors import SpecError

# How llama.cpp names a pre-tokenizer, recognised from its shape in tokenizer.json.
_DIGITS_THEN_BYTES = "smollm"  # SmolLM: every digit on its own, then GPT-2's byte-level split


@dataclass(frozen=True)
class GGUFVocab:
    """Everything the writer puts under ``tokenizer.*``."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    unk_id: int | None
    add_bos: bool
    chat_template: str | None
    notes: tuple[str, ...] = ()


def _backend(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SpecError(f"GGUF export needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} is not one. "
                        "Export as format hf or compressed-tensors")
    return json.loads(backend.to_str())


def _pre_name(pre: dict | None) -> str | None:
    """llama.cpp's name for this pre-tokenizer, or None when it is not one we recognise."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    if pre is None:
        return None
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"  # llama.cpp's name for GPT-2's split ("gpt2" is refused as an unknown pre-tokenizer)
    parts = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if not parts or len(parts) != 2 or parts[1].get("type") != "ByteLevel":
        return None
    first = parts[0]
    if first.get("type") == "Digits" and first.get("individual_digits") and parts[1].get("use_regex", True):
        return _DIGITS_THEN_BYTES
    regex = (first.get("pattern") or {}).get("Regex") if first.get("type") == "Split" else None
    return next((name for name, split in GGUF_PRE_TOKENIZER_SPLITS.items() if split == regex), None)


def _merges(model: dict) -> list[str]:
    # tokenizers writes merges as ["a", "b"] pairs (>= 0.20) or as "a b" strings (older files)
    return [" ".join(m) if isinstance(m, list) else m for m in model.get("merges", [])]


def vocab_for(tokenizer, vocab_size: int) -> GGUFVocab:
    """The GGUF tokenizer metadata for a byte-level BPE ``tokenizer`` and a model of ``vocab_size`` rows."""
    data = _backend(tokenizer)
    model = data.get("model") or {}
    decoder = data.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise SpecError(f"GGUF export writes byte-level BPE tokenizers (GPT-2 / SmolLM / Llama 3 style); this one is "
                        f"{model.get('type')} with a {decoder.get('type')} decoder. Export as format hf or "
                        "compressed-tensors, which keep tokenizer.json as it is")
    by_id = {index: token for token, index in model["vocab"].items()}
    types = dict.fromkeys(by_id, 1)  # NORMAL
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = 3 if added.get("special") else 4  # CONTROL / USER_DEFINED
    if max(by_id) >= vocab_size:
        raise SpecError(f"the tokenizer has token id {max(by_id)} but the model only {vocab_size} embedding rows")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]  # llama.cpp's filler for unused rows
    token_types = [types.get(i, 5) for i in range(vocab_size)]  # 5: UNUSED
    pre = _pre_name(data.get("pre_tokenizer"))
    notes = () if pre else ("pre-tokenizer not recognised: written as gpt-2 (GPT-2's split); text may tokenize "
                            "differently after reload, which the export check reports",)
    return GGUFVocab(tokens, token_types, _merges(model), pre or "gpt-2", tokenizer.bos_token_id,
                     tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id,
                     _adds_bos(tokenizer), getattr(tokenizer, "chat_template", None),
                     notes)


def write_vocab(writer, vocab: GGUFVocab) -> None:
    """Add the ``tokenizer.*`` keys to a ``gguf.GGUFWriter``."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for token_id, add in ((vocab.bos_id, writer.add_bos_token_id), (vocab.eos_id, writer.add_eos_token_id),
                          (vocab.pad_id, writer.add_pad_token_id), (vocab.unk_id, writer.add_unk_token_id)):
        if token_id is not None:
            add(int(token_id))
    writer.add_add_bos_token(vocab.add_bos)
    if isinstance(vocab.chat_template, str) and vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS before every text: its flag, or what it does (a post-processor
    template, as Gemma's tokenizer.json has, sets no flag)."""
    return bool(getattr(tokenizer, "add_bos_token", False)) or added_bos(tokenizer) is not None
