"""Run a model from one decoder block on: the logits when block ``index`` receives given hidden states.

A sensitivity atlas changes one layer at a time and scores the model's output; everything before that
layer's block is unchanged, so its output is computed once (the walk's ``BlockInput``) and each score
runs only the blocks from there on, then the model's own final norm and head. The earlier blocks are
left out of the block list for the call, and a forward pre-hook on block ``index`` puts the stored
hidden states in place of what the embedding gives it; the model's own code still makes the masks and
position embeddings, so they are what a full forward would use.
"""

from __future__ import annotations

import torch
from torch import nn

from core.layers import decoder_blocks, model_device


@torch.no_grad()
def logits_from_block(model: nn.Module, index: int, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Logits [batch, seq, vocab] of ``ids`` [batch, seq] with ``hidden`` [batch, seq, width] entering block
    ``index`` (blocks before it are not run). The model is left as it was, whatever happens."""
    name, blocks = decoder_blocks(model)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    device = model_device(model)
    hidden = hidden.to(device)

    def substitute(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = blocks[index].register_forward_pre_hook(substitute, with_kwargs=True)
    setattr(parent, attribute, nn.ModuleList(list(blocks)[index:]))
    try:
        return model(input_ids=ids.to(device), use_cache=False).logits
    finally:
        setattr(parent, attribute, blocks)
        handle.remove()
