"""Builders for tiny, randomly initialised models and tokenizers, made offline in milliseconds.

Every builder writes a folder that ``core.models.load`` (or a refusal in it) can be pointed at.
Sizes are the smallest that still exercise each architecture's real code paths: 2 layers, hidden
size 32, a ~300-token byte-level BPE vocabulary.
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import torch

CAUSAL_FAMILIES = ("gpt2", "opt", "gpt_neox", "llama")
# Every family of core.architectures, for the family x technique x format matrix (tests/test_families*.py)
MATRIX_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "gpt2", "opt", "gpt_neox",
                   "falcon")
# Families whose tokenizers put a beginning-of-sequence token before every text (Gemma's do)
BOS_FAMILIES = ("gemma2", "gemma3")
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<bos>"
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


def tiny_tokenizer(vocab_size: int = VOCAB_SIZE, bos: bool = False):
    """A byte-level BPE tokenizer trained on ``corpus_text()``, with EOS and PAD special tokens.

    ``bos=True`` adds a ``<bos>`` token that the tokenizer puts before every text, as Gemma's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN] + ([BOS_TOKEN] if bos else []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus_text().splitlines(), trainer=trainer)
    if not bos:
        return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B",
                                                           special_tokens=[(BOS_TOKEN, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN)


def _causal_config(family: str, vocab_size: int, eos_id: int, pad_id: int, bos_id: int | None = None):
    """A 2-layer, 32-wide config of ``family``; llama uses grouped-query attention (4 heads, 2 KV)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig

    ids = {"bos_token_id": eos_id if bos_id is None else bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    if family not in CAUSAL_FAMILIES:
        return _matrix_config(family, vocab_size, ids)
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


def _matrix_config(family: str, vocab_size: int, ids: dict):
    """The other families at the same scale, each with what makes it differ (see core.architectures).

    Where a family's real models fix a size that llama.cpp or transformers' GGUF loader assume rather than
    read (Gemma's and Qwen3's head size, Phi-3's context), the tiny config keeps that size."""
    import transformers as hf

    base = {"vocab_size": vocab_size, "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN,
            "num_hidden_layers": LAYERS, "max_position_embeddings": CONTEXT, **ids}
    if family == "mistral":  # sliding_window null, as Mistral 7B v0.3
        return hf.MistralConfig(**base, num_attention_heads=4, num_key_value_heads=2, sliding_window=None)
    if family == "qwen2":  # q/k/v biases, tied embedding (Qwen2.5-0.5B)
        return hf.Qwen2Config(**base, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    if family == "qwen3":  # q/k norms, head size 128 apart from the width
        return hf.Qwen3Config(**base, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
                              tie_word_embeddings=True)
    if family == "gemma2":  # scaled embedding, 1 + w norms, pre/post feed-forward norms, sliding/full, soft-capping
        return hf.Gemma2Config(**base, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
                               query_pre_attn_scalar=256, sliding_window=16)
    if family == "gemma3":  # q/k norms; 6 blocks: five sliding-window (local RoPE base) and one full attention
        return hf.Gemma3TextConfig(**{**base, "num_hidden_layers": 6}, num_attention_heads=2, num_key_value_heads=1,
                                   head_dim=256, query_pre_attn_scalar=256, sliding_window=16)
    if family == "phi3":  # fused qkv_proj and gate_up_proj
        return hf.Phi3Config(**{**base, "max_position_embeddings": 4096}, num_attention_heads=4,
                             num_key_value_heads=2, original_max_position_embeddings=4096)
    if family == "falcon":  # fused multi-query query_key_value, parallel attention and MLP, LayerNorm
        return hf.FalconConfig(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                               num_attention_heads=4, max_position_embeddings=CONTEXT, **ids)
    raise ValueError(f"unknown family {family!r}; use one of {', '.join(MATRIX_FAMILIES)}")


def tiny_causal_lm(family: str, tokenizer=None, **overrides):
    """A randomly initialised (torch seed 0) causal LM of ``family`` sized for ``tokenizer``.

    ``overrides`` change config fields (e.g. ``tie_word_embeddings=True`` for a SmolLM2-style Llama)."""
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    config = _causal_config(family, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id,
                            tokenizer.bos_token_id)
    if overrides:  # rebuilt, so that derived fields (Gemma's and Qwen's per-layer layer_types) follow
        fields = {**config.to_dict(), **overrides}
        if "num_hidden_layers" in overrides and "layer_types" not in overrides:
            fields.pop("layer_types", None)
        config = type(config).from_dict(fields)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def trained_tiny_lm(family: str, tokenizer=None, steps: int = 150, **overrides):
    """``tiny_causal_lm`` trained for ``steps`` AdamW steps (8 windows of 32 tokens of ``corpus_text()``, seeded),
    so that its predictions depend on its inputs, as a real model's do: a random model's near-uniform output
    hides what a broken embedding or norm does. Windows start with the tokenizer's BOS when it adds one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every test runs (conftest); a module-scoped fixture runs before that setting
    try:
        return _trained(family, tokenizer if tokenizer is not None else family_tokenizer(family), steps, overrides)
    finally:
        torch.set_num_threads(threads)


def _trained(family: str, tokenizer, steps: int, overrides: dict):
    model = tiny_causal_lm(family, tokenizer, **overrides).train()
    ids = tokenizer(corpus_text(), return_tensors="pt")["input_ids"][0]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        starts = torch.randint(0, ids.numel() - 33, (8,), generator=generator)
        batch = torch.stack([ids[start : start + 32] for start in starts.tolist()])
        if tokenizer.bos_token_id is not None and family in BOS_FAMILIES:
            batch[:, 0] = tokenizer.bos_token_id
        model(input_ids=batch, labels=batch, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@functools.cache
def _family_tokenizer_files(family: str) -> str:
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix=f"tiny-{family}-tokenizer-")
    atexit.register(shutil.rmtree, folder, True)
    tokenizer = tiny_tokenizer(bos=family in BOS_FAMILIES)
    tokenizer.save_pretrained(folder)
    _causal_config(family, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id,
                   tokenizer.bos_token_id).save_pretrained(folder)
    return folder


def family_tokenizer(family: str):
    """The tiny tokenizer a family's models use (a BOS before every text for Gemma), as transformers loads it
    for that family (Qwen2's class, for one, splits digits its own way): what a reloaded export gets too."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_family_tokenizer_files(family))


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


def cli_exit(argv: list[str]) -> int:
    """``squeezelab ARGV``'s exit code, in this process; argparse refusals leave through SystemExit, same code."""
    from core.cli import main

    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code
