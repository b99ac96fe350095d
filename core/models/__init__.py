"""Models: what a reference names, where it runs, how it loads, and how our exports load back.

* ``source``   - model references (``sample:``, folder, ``.gguf``, Hub id) and ``LoadedModel``.
* ``device``   - device and dtype choice, free memory checks.
* ``loading``  - ``load``: samples, folders, GGUF (converted once and cached), the Hub; safety opt-ins.
* ``exported`` - ``load_exported``: SqueezeLab's own stored form, plain and compressed-tensors folders, GGUF.
* ``gguf_read`` - SqueezeLab's own reader of GGUF files of the families transformers cannot rebuild (GPT-2,
  GPT-NeoX, Falcon).
* ``skeleton`` - an empty model of a config's class, for readers that fill in every weight.
* ``sparse``   - the bitmask + values storage of pruned matrices in SqueezeLab's folders.
* ``files``    - checks of a model's files (JSON, safetensors, tokenizer, GGUF) that name a damaged file.
"""

from core.models.device import DTYPES, check_memory, estimate_weight_bytes, free_memory_bytes, pick_device, pick_dtype
from core.models.exported import is_squeezelab_folder, load_exported
from core.models.loading import cache_dir, clone, gguf_as_folder, hub_reachable, load, load_tokenizer, read_config
from core.models.source import (
    DEFAULT_MODEL,
    SAMPLE_ALIASES,
    SAMPLE_PREFIX,
    SAMPLES_DIR,
    LoadedModel,
    ModelSource,
    context_length,
    resolve,
    sample_names,
)

__all__ = [
    "DEFAULT_MODEL", "DTYPES", "SAMPLES_DIR", "SAMPLE_ALIASES", "SAMPLE_PREFIX", "LoadedModel", "ModelSource",
    "cache_dir", "check_memory", "clone", "context_length", "estimate_weight_bytes", "free_memory_bytes",
    "gguf_as_folder", "hub_reachable", "is_squeezelab_folder", "load", "load_exported", "load_tokenizer",
    "pick_device", "pick_dtype", "read_config", "resolve", "sample_names",
]
