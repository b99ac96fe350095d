"""Builders for tiny, randomly initialised models and tokenizers, made offline in milliseconds.

Every builder writes a folder that ``core.models.load`` (or a refusal in it) can be pointed at.
Sizes are the smallest that still exercise each architecture's real code paths: 2 layers, hidden
size 32, a ~300-token byte-level BPE vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

CAUSAL_FAMILIES = ("gpt2", "opt", "gpt_neox", "llama")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
VOCAB_SIZE = 300
HIDDEN = 32
LAYERS = 2
CONTEXT = 128
_WORDS = (
    "def", "return", "class", "import", "for", "in", "if", "else", "while", "self", "None", "True",
    "value", "items", "key", "name", "list", "dict", "print", "range", "len", "x", "y", "i", "=",
    "(", ")", ":", ",", "+", "-", "*", "0", "1", "2", "lambda", "yield", "with", "as", "try",
)


def corpus_text(n_words: int = 1500, seed: int = 0) -> str:
    """A few KB of pseudo-code text, deterministic for a seed (tokenizer training and test input)."""
    rng = random.Random(seed)
    lines, line = [], []
    for _ in range(n_words):
        line.append(rng.choice(_WORDS))
        if len(line) >= rng.randint(4, 10):
            lines.append(" " * 4 * rng.randint(0, 2) + " ".join(line))
            line = []
    return "\n".join(lines) + "\n"


def tiny_tokenizer(vocab_size: int = VOCAB_SIZE):
    """A byte-level BPE tokenizer trained on ``corpus_text()``, with EOS and PAD special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)


def _causal_config(family: str, vocab_size: int, eos_id: int, pad_id: int):
    """A 2-layer, 32-wide config of ``family``; llama uses grouped-query attention (4 heads, 2 KV)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig

    ids = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_positions=CONTEXT, n_embd=HIDDEN, n_layer=LAYERS, n_head=2, **ids)
    if family == "opt":
        return OPTConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=2 * HIDDEN,
                         num_attention_heads=2, max_position_embeddings=CONTEXT, word_embed_proj_dim=HIDDEN, **ids)
    if family == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                             num_attention_heads=2, intermediate_size=2 * HIDDEN, max_position_embeddings=CONTEXT,
                             **ids)
    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                           num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=CONTEXT, **ids)
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(CAUSAL_FAMILIES)}")


def tiny_causal_lm(family: str, tokenizer=None):
    """A randomly initialised (torch seed 0) causal LM of ``family`` sized for ``tokenizer``."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = _causal_config(family, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_model_folder(family: str, path: Path) -> Path:
    """Save a tiny ``family`` causal LM (safetensors) and its tokenizer into ``path``; return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    tiny_causal_lm(family, tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def bert_folder(path: Path) -> Path:
    """A tiny BERT encoder (``BertModel``, not a text generator) with a tokenizer, saved to ``path``."""
    from transformers import BertConfig, BertModel

    return _save_encoder(BertModel, BertConfig, path)


def distilbert_folder(path: Path) -> Path:
    """A tiny DistilBERT encoder (no causal-LM head exists for it in transformers), saved to ``path``."""
    from transformers import DistilBertConfig, DistilBertModel

    return _save_encoder(DistilBertModel, DistilBertConfig, path, dim=HIDDEN, hidden_dim=2 * HIDDEN, n_layers=LAYERS,
                         n_heads=2, max_position_embeddings=CONTEXT)


def _save_encoder(model_cls, config_cls, path: Path, **sizes) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    sizes = sizes or {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 2,
                      "intermediate_size": 2 * HIDDEN, "max_position_embeddings": CONTEXT}
    torch.manual_seed(0)
    model_cls(config_cls(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **sizes)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def pickle_only_folder(path: Path, family: str = "gpt2") -> Path:
    """A tiny causal LM whose weights exist only as a pickled state dict (``pytorch_model.bin``)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    model = tiny_causal_lm(family, tokenizer)
    model.config.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    tokenizer.save_pretrained(path)
    return path


def remote_code_folder(path: Path) -> Path:
    """A folder whose config names a model type transformers does not know, plus an ``auto_map``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "squeezelab_custom_lm",
        "architectures": ["CustomForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
        "hidden_size": HIDDEN,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path
