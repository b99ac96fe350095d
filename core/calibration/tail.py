"""Run a model from one decoder block on: the logits when block ``index`` receives given hidden states.

A sensitivity atlas changes one layer at a time and scores the model's output; everything before that
layer's block is unchanged, so its output is computed once (the walk's ``BlockInput``) and each score
runs only the blocks from there on, then the model's own final norm and head. The earlier blocks pass
their input through without computing (``core.calibration.walk.skipping``), and a forward pre-hook on
block ``index`` puts the stored hidden states in place of what it would get; the model's own code still
makes every block's mask and position embeddings, in its own order, so each block gets what a full
forward gives it (models that pick a block's mask by its position in the list, as Gemma-2/3 and Qwen2
do, included).
"""

from __future__ import annotations

import torch
from torch import nn

from core.calibration.walk import skipping
from core.layers import decoder_blocks, model_device


@torch.no_grad()
def logits_from_block(model: nn.Module, index: int, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits [batch, seq, vocab] of ``ids`` [batch, seq] with ``hidden`` [batch, seq, width] entering block
    ``index`` (blocks before it are not run). The model is left as it was, whatever happens."""
    _, blocks = decoder_blocks(model)
    device = model_device(model)
    hidden = hidden.to(device)

    def substitute(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = blocks[index].register_forward_pre_hook(substitute, with_kwargs=True)
    try:
        with skipping(list(blocks)[:index]):
            return model(input_ids=ids.to(device), use_cache=False).logits
    finally:
        handle.remove()
