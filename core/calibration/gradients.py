"""How much the loss minds each output channel of chosen layers: mean squared gradients over calibration tokens.

A layer's output error costs the loss in proportion to how sensitive the loss is to that output: to second
order, ``delta NLL ~ 1/2 sum_i E[g_i^2] E[dy_i^2]`` with ``g = dNLL/dy`` (the empirical Fisher, diagonal).
This runs the model over calibration rows, takes the gradient of the summed next-token NLL with respect to
every chosen module's output (``torch.autograd.grad``: no parameter gets a ``.grad``), and returns
``E[g_i^2]`` per output feature. The embedding output is the leaf the graph starts from, so the weights'
``requires_grad`` flags do not matter and are not touched; the model is left in the mode it was in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.layers import model_device
from core.progress import CancelFn, ProgressFn, check_cancel, report


def output_gradient_squares(model: nn.Module, modules: Sequence[nn.Module], ids: torch.Tensor, what: str,
                            on_progress: ProgressFn | None = None,
                            cancel: CancelFn | None = None) -> list[torch.Tensor]:
    """E[(dNLL/dy_i)^2] over every token of ``ids`` [samples, seqlen], per output feature of each module."""
    device, was_training = model_device(model), model.training
    sums = [None] * len(modules)
    tokens = 0
    outputs: list[torch.Tensor | None] = [None] * len(modules)

    def keeper(index: int):  # noqa: ANN202 - a forward hook
        def keep(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            outputs[index] = output
        return keep

    handles = [module.register_forward_hook(keeper(i)) for i, module in enumerate(modules)]
    model.eval()
    try:
        for row in range(ids.shape[0]):
            check_cancel(cancel, f"{what} cancelled after {row} of {ids.shape[0]} gradient samples; nothing changed")
            batch = ids[row : row + 1].to(device)
            with torch.enable_grad():
                embeds = model.get_input_embeddings()(batch).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, use_cache=False).logits
                loss = F.cross_entropy(logits[0, :-1].float(), batch[0, 1:], reduction="sum")
                grads = torch.autograd.grad(loss, outputs, allow_unused=True)
            for i, grad in enumerate(grads):
                if grad is not None:
                    squares = grad.detach().float().reshape(-1, grad.shape[-1]).square().sum(dim=0)
                    sums[i] = squares if sums[i] is None else sums[i] + squares
            tokens += batch.shape[1]
            outputs = [None] * len(modules)
            report(on_progress, f"{what}: gradients", (row + 1) / ids.shape[0])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return [(s / tokens).cpu() if s is not None else torch.zeros(0) for s in sums]
