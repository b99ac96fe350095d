"""Recovery after pruning: a short fine-tune on next-token loss with the zeros held fixed."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.layers import block_linear_layers, model_device
from core.progress import CancelFn, ProgressFn


def finetune_masked_(
    model: nn.Module,
    batches: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 8,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[float]:
    """AdamW on next-token loss over ``batches`` [n, seqlen] (``batch_size`` rows a step, cycling); in place.

    Zeros of the decoder blocks' linear weights stay zero: their gradients are masked and the mask is
    re-applied after every step. Returns the training loss of each step done. ``cancel()`` is asked before
    each step and stops the fine-tune there: the model keeps the steps done (zeros intact), and fewer than
    ``steps`` losses come back, so the caller can tell (the run then evaluates the model as it is).
    """
    masks = [(layer.weight, layer.weight.detach() != 0) for _, layer in block_linear_layers(model)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    device, was_training, losses = model_device(model), model.training, []
    model.train()
    try:
        for step in range(steps):
            if cancel is not None and cancel():
                break  # a graceful stop: what the steps done learned is worth keeping
            rows = torch.arange(step * batch_size, (step + 1) * batch_size) % batches.shape[0]
            batch = batches[rows].to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                for weight, keep in masks:
                    if weight.grad is not None:
                        weight.grad.mul_(keep)
                optimizer.step()
                for weight, keep in masks:
                    weight.mul_(keep)
            losses.append(float(loss.detach()))
            if on_progress is not None:
                on_progress("fine-tune", (step + 1) / steps)
    finally:
        model.train(was_training)
    return losses
