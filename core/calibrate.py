"""Sequential calibration: walk a model's decoder blocks with calibration data flowing through them.

Data-aware compression (Wanda, SparseGPT, GPTQ) needs statistics of each linear layer's input.
They are gathered block by block, as the SparseGPT and GPTQ papers do:

1. the inputs of the first decoder block are captured once, one calibration sample at a time;
2. for each block, forward hooks on its selected linear layers accumulate input statistics over
   every sample (all layers of a block see the block's dense activations in this one pass);
3. each layer is compressed by a caller-supplied ``solve`` function;
4. the block, now compressed, is re-run on the same inputs to give the next block its inputs.

So every block is calibrated on activations that already went through the compressed earlier
blocks, and only one block's inputs are held in memory. The keyword arguments a block receives
(attention mask, position embeddings, ...) are captured at the first block and passed unchanged to
every block; models whose blocks get different masks (mixed sliding/full attention) are outside
what this walk reproduces.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import nn

from core.errors import CancelledError, SpecError
from core.evaluate import CancelFn, ProgressFn
from core.layers import decoder_blocks, linear_layers, weight_matrix

T = TypeVar("T")
SolveFn = Callable[[str, nn.Module, "HessianAccumulator | None"], T]


class HessianAccumulator:
    """Running input statistics of one linear layer.

    ``hessian`` [in, in] is ``2/N * X^T X`` over the N = ``hessian_tokens`` tokens folded into it
    (float32, kept as a running mean so it never grows with N); ``act_sq_sum`` [in] is the sum of
    squares of each input column over all ``tokens`` seen (Wanda's activation norms are its square
    root). ``max_hessian_tokens`` caps N: X^T X costs as much as the layer's own forward, and a
    caller that only reports errors from it does not need it over every token.
    """

    def __init__(self, columns: int, device: torch.device | str | None = None,
                 max_hessian_tokens: int | None = None) -> None:
        self.hessian = torch.zeros(columns, columns, dtype=torch.float32, device=device)
        self.act_sq_sum = torch.zeros(columns, dtype=torch.float32, device=device)
        self.tokens = 0
        self.hessian_tokens = 0
        self.max_hessian_tokens = max_hessian_tokens

    def add_batch(self, x: torch.Tensor) -> None:
        """Fold in inputs ``x`` [..., in] (every leading dimension counts as tokens)."""
        x = x.detach().reshape(-1, self.hessian.shape[0]).to(self.hessian.device, torch.float32)
        if x.shape[0] == 0:
            return
        self.act_sq_sum += x.square().sum(dim=0)
        self.tokens += x.shape[0]
        if self.max_hessian_tokens is not None:
            x = x[: max(self.max_hessian_tokens - self.hessian_tokens, 0)]
        if x.shape[0] == 0:
            return
        total = self.hessian_tokens + x.shape[0]
        # H_new = (N_old / N_new) * H_old + (2 / N_new) * X^T X
        self.hessian.addmm_(x.t(), x, beta=self.hessian_tokens / total, alpha=2.0 / total)
        self.hessian_tokens = total

    @property
    def act_norm(self) -> torch.Tensor:
        """||X_j||_2 per input column j: [in]."""
        return self.act_sq_sum.sqrt()


def reconstruction_error(w_old: torch.Tensor, w_new: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative output error ||(W - W') X||_F / ||W X||_F from H ∝ X^T X [in, in]; W, W' are [out, in].

    Uses ||A X||_F^2 = tr(A X^T X A^T), so no activations are stored; any scale of H cancels.
    """
    dtype = torch.float64 if torch.float64 in (w_old.dtype, w_new.dtype, hessian.dtype) else torch.float32
    h = hessian.to(w_old.device, dtype)
    old, delta = w_old.to(dtype), w_old.to(dtype) - w_new.to(w_old.device, dtype)
    error = float(((delta @ h) * delta).sum().clamp_min(0))
    signal = float(((old @ h) * old).sum())
    if signal <= 0:
        return 0.0 if error == 0 else math.inf
    return math.sqrt(error / signal)


def drop_dead_inputs_(weight: torch.Tensor, hessian: torch.Tensor) -> None:
    """In place: inputs that were always zero (H_jj = 0) get H_jj = 1 and zero weights [out, in], so H
    stays invertible and those weights, which never affect the output, do not steer the solve."""
    dead = torch.nonzero(torch.diagonal(hessian) == 0).squeeze(1)
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0


def inverse_hessian_factor(hessian: torch.Tensor, percdamp: float, method: str, attempts: int = 5) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp*I)^-1, so that U^T U = (H + damp*I)^-1; more damping if needed.

    ``damp`` is ``percdamp`` times the mean of diag(H) (SparseGPT and GPTQ both solve with this factor).
    """
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    mean_diag, damp = torch.diagonal(hessian).mean(), percdamp
    for attempt in range(attempts):
        tried = damp
        lower, info = torch.linalg.cholesky_ex(hessian + damp * mean_diag * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                if attempt:
                    warnings.warn(f"{method}: the Hessian was not positive definite with percdamp={percdamp:g}; "
                                  f"solved with percdamp={damp:g} instead (more calibration data helps)", stacklevel=3)
                return upper
        damp = max(10 * damp, 0.01)
    raise ValueError(f"{method}: the Hessian is not positive definite even with percdamp={tried:g}; "
                     "the calibration activations may hold NaN or inf")


@dataclass(frozen=True)
class BlockInput:
    """One calibration sample as a decoder block receives it: hidden states [1, seq, hidden] and the rest."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict

    def run(self, block: nn.Module) -> torch.Tensor:
        """The block's output hidden states for this sample (the first element of a tuple output)."""
        out = block(self.hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple | list) else out


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


def model_device(model: nn.Module) -> torch.device:
    """Where the model's (first) parameters live; calibration inputs are moved there."""
    return next(model.parameters()).device


def check_calibration(calibration: torch.Tensor) -> torch.Tensor:
    """Token ids must be a 2-D integer tensor [samples, seqlen]."""
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.is_floating_point():
        shape = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        raise SpecError(f"calibration must be token ids shaped [samples, seqlen], got {shape}; "
                        "core.data.calibration_batches makes them")
    return calibration


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calibration: torch.Tensor) -> list[BlockInput]:
    """Run the model on each sample of ``calibration`` [n, seqlen]; keep what the first block receives."""
    _, blocks = decoder_blocks(model)
    captured: list[BlockInput] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append(BlockInput(hidden.detach(), tuple(args[1:]), kwargs))
        raise _StopForward

    device = model_device(model)
    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for sample in check_calibration(calibration):
            try:
                model(input_ids=sample.unsqueeze(0).to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def collect_statistics(
    block: nn.Module,
    layers: list[tuple[str, nn.Module]],
    inputs: list[BlockInput],
    max_hessian_tokens: int | None = None,
) -> dict[str, HessianAccumulator]:
    """Input statistics of ``layers`` (inside ``block``) over every stored input of the block.

    Two savings, both found on the first sample: layers that receive the very same input tensor
    (q/k/v projections, gate/up projections) share one accumulator, so their X^T X is computed once;
    and from the second sample on the forward stops at the input of the last selected layer, since
    nothing after it (its own matmul included) feeds a statistic.
    """
    stats: dict[str, HessianAccumulator] = {}
    owner: dict[str, str] = {}  # layer -> the layer whose accumulator it shares (itself when first)
    first_sample_inputs: dict[str, torch.Tensor] = {}
    calls: list[str] = []  # the order layers ran in on the first sample
    stop_at: list[str] = []  # the layer whose input ends the forward (set after the first sample)

    def hook(name: str, module: nn.Module, x: torch.Tensor) -> None:
        if name not in owner:
            same = next((other for other, seen in first_sample_inputs.items() if seen is x), None)
            owner[name] = same or name
            if same is None:
                stats[name] = HessianAccumulator(weight_matrix(module).shape[1], module.weight.device,
                                                 max_hessian_tokens)
            first_sample_inputs[name] = x
        if owner[name] == name:
            stats[name].add_batch(x)
        calls.append(name)
        if stop_at and name == stop_at[0]:
            raise _StopForward

    handles = [module.register_forward_pre_hook(
        lambda m, args, kwargs, name=name: hook(name, m, args[0] if args else next(iter(kwargs.values()))),
        with_kwargs=True) for name, module in layers]
    try:
        for index, item in enumerate(inputs):
            try:
                item.run(block)
            except _StopForward:
                pass
            if index == 0:
                first_sample_inputs.clear()  # only the first sample's identities matter
                if calls and len(set(calls)) == len(calls):  # each layer ran once: safe to stop early
                    stop_at.append(calls[-1])
    finally:
        for handle in handles:
            handle.remove()
    # a layer the forward never called keeps an empty accumulator (zero tokens): its solver decides
    return {name: stats[owner[name]] if name in owner else
            HessianAccumulator(weight_matrix(module).shape[1], module.weight.device, max_hessian_tokens)
            for name, module in layers}


def _check_cancel(cancel: CancelFn | None, done: int, total: int) -> None:
    if cancel is not None and cancel():
        raise CancelledError(f"stopped after {done} of {total} layers; the model is partially compressed "
                             "(callers work on a copy, which can be thrown away)")


@torch.no_grad()
def sequential_walk(
    model: nn.Module,
    calibration: torch.Tensor | None,
    solve: SolveFn,
    include: tuple[str, ...] = ("*",),
    exclude: tuple[str, ...] = (),
    stage: str = "calibrate",
    max_hessian_tokens: int | None = None,
    on_progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[T]:
    """Call ``solve(name, layer, stats)`` on every selected linear layer of the decoder blocks, in order.

    With ``calibration`` [n, seqlen] the stats are each layer's ``HessianAccumulator`` gathered
    sequentially (see the module docstring), X^T X over at most ``max_hessian_tokens`` tokens (None:
    all); without calibration they are ``None`` and no forward runs.
    ``on_progress(stage + ": " + name, fraction)`` follows each layer; ``cancel()`` is asked before
    each layer and raises ``CancelledError`` (the layers already solved stay changed).
    """
    blocks_name, blocks = decoder_blocks(model)
    plan = [list(linear_layers(block, include, exclude, prefix=f"{blocks_name}.{i}")) for i, block in enumerate(blocks)]
    total = sum(len(layers) for layers in plan)
    if total == 0:
        return []
    last = max(i for i, layers in enumerate(plan) if layers)
    was_training = model.training
    model.eval()  # no dropout while statistics are gathered
    results: list[T] = []
    try:
        inputs = capture_block_inputs(model, calibration) if calibration is not None else []
        for index, block in enumerate(blocks[: last + 1]):
            stats = collect_statistics(block, plan[index], inputs, max_hessian_tokens) if inputs and plan[index] else {}
            for name, module in plan[index]:
                _check_cancel(cancel, len(results), total)
                results.append(solve(name, module, stats.pop(name, None)))
                if on_progress is not None:
                    on_progress(f"{stage}: {name}", len(results) / total)
            if inputs and index < last:
                inputs = [replace(item, hidden=item.run(block)) for item in inputs]
    finally:
        model.train(was_training)
    return results
