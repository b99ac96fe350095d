"""An empty model of a config's class, for readers that fill in every weight themselves."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def skeleton(config, dtype: torch.dtype) -> nn.Module:
    """An instance of the config's class whose weights are about to be overwritten (init skipped if possible)."""
    from transformers import AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: a random init, then overwritten
        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # skipping the init also skips the tie that from_config would make
    return model
