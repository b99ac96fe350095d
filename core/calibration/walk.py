"""Sequential calibration: walk a model's decoder blocks with calibration data flowing through them.

Data-aware compression (Wanda, SparseGPT, GPTQ) needs statistics of each linear layer's input.
They are gathered block by block, as the SparseGPT and GPTQ papers do:

1. the inputs of the first decoder block are captured once, one calibration sample at a time;
2. for each block, forward hooks on its selected linear layers accumulate input statistics over
   every sample (all layers of a block see the block's dense activations in this one pass);
3. each layer is compressed by a caller-supplied ``solve`` function;
4. the block, now compressed, is re-run on the same inputs to give the next block its inputs.

So every block is calibrated on activations that already went through the compressed earlier
blocks, and only one block's inputs are held in memory. The other arguments a block receives
(attention mask, position embeddings, ...) are captured for every block separately: Gemma-2/3 and
Qwen2 mix sliding-window and full-attention blocks, with different masks and (Gemma-3) different
RoPE bases, so block 3 must not be replayed with block 0's. They are captured in one cheap pass per
sample in which every block's own computation is skipped (``skipping``): the model's code still
builds each block's mask and position embeddings, and each block's pre-hook records what it got.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import torch
from torch import nn

from core.calibration.hessian import HessianAccumulator
from core.errors import SpecError
from core.layers import decoder_blocks, linear_layers, model_device, weight_matrix
from core.progress import CancelFn, ProgressFn, check_cancel, report

T = TypeVar("T")
SolveFn = Callable[[str, nn.Module, "HessianAccumulator | None"], T]
# prepare(block index, the block's selected (name, layer) pairs, their statistics by name): called once a
# block's statistics are gathered and before any of its layers is solved (AWQ folds its scales there)
PrepareFn = Callable[[int, list, dict], None]


@dataclass(frozen=True)
class BlockInput:
    """One calibration sample as decoder block ``index`` receives it: hidden states [1, seq, hidden], and for
    every block the other arguments a full forward passes it (``calls[i]`` = (positional args, kwargs))."""

    hidden: torch.Tensor
    calls: tuple[tuple[tuple, dict], ...]
    index: int = 0

    @property
    def args(self) -> tuple:
        return self.calls[self.index][0]

    @property
    def kwargs(self) -> dict:
        return self.calls[self.index][1]

    def run(self, block: nn.Module) -> torch.Tensor:
        """The output hidden states of ``block`` (block ``index``) for this sample (a tuple output's first part)."""
        out = block(self.hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple | list) else out

    def advance(self, block: nn.Module) -> BlockInput:
        """This sample as the next block receives it, after ``block`` (block ``index``) ran on it."""
        return replace(self, hidden=self.run(block), index=min(self.index + 1, len(self.calls) - 1))


class StopForward(Exception):
    """Raised by a hook: nothing after this point of the forward needs to run."""


class _Skipped(tuple):
    """What a skipped block returns: ``(hidden,)``. A model that takes ``block(...)[0]`` (Falcon) gets the
    hidden states back; one that takes the whole output hands the tuple to the next block, which, skipped
    too, passes it on unchanged. Whoever stops skipping (a pre-hook) puts real hidden states in its place."""


def _pass_through(hidden_states: torch.Tensor | _Skipped, *args, **kwargs) -> _Skipped:
    return hidden_states if isinstance(hidden_states, _Skipped) else _Skipped((hidden_states,))


@contextlib.contextmanager
def skipping(blocks: Sequence[nn.Module]) -> Iterator[None]:
    """Inside the block, calling any of ``blocks`` returns its hidden-state input unchanged (their forward
    hooks still run): the model's own code still computes what every block receives, at no block's cost.
    The model must not use what the skipped blocks return (see ``_Skipped``): a pre-hook on the first block
    that runs replaces it, or raises ``StopForward``."""
    saved = [(block, block.__dict__.get("forward")) for block in blocks]
    for block in blocks:
        block.forward = _pass_through
    try:
        yield
    finally:
        for block, forward in saved:
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def check_calibration(calibration: torch.Tensor) -> torch.Tensor:
    """Token ids must be a 2-D integer tensor [samples, seqlen]."""
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.is_floating_point():
        shape = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        raise SpecError(f"calibration must be token ids shaped [samples, seqlen], got {shape}; "
                        "core.data.calibration_batches makes them")
    return calibration


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calibration: torch.Tensor) -> list[BlockInput]:
    """Run the model on each sample of ``calibration`` [n, seqlen]; keep what the first block receives, and
    the other arguments every block receives (their computation skipped: see the module docstring)."""
    _, blocks = decoder_blocks(model)
    captured: list[BlockInput] = []
    hidden: list[torch.Tensor] = []
    calls: list[tuple[tuple, dict]] = []

    def hook(index: int, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        given = args[0] if args else kwargs.pop("hidden_states")
        if index == 0:
            hidden.append(given.detach())
        calls.append((tuple(args[1:]), kwargs))
        if index == len(blocks) - 1:
            raise StopForward

    device = model_device(model)
    handles = [block.register_forward_pre_hook(lambda _m, args, kwargs, i=i: hook(i, args, kwargs), with_kwargs=True)
               for i, block in enumerate(blocks)]
    try:
        with skipping(blocks):
            for sample in check_calibration(calibration):
                hidden.clear()
                calls.clear()
                try:
                    model(input_ids=sample.unsqueeze(0).to(device), use_cache=False)
                except StopForward:
                    pass
                captured.append(BlockInput(hidden[0], tuple(calls)))
    finally:
        for handle in handles:
            handle.remove()
    return captured


class _LayerStatistics:
    """Forward pre-hooks that fold each layer's input into its ``HessianAccumulator``.

    Two savings, both found on the first sample: layers that receive the very same input tensor
    (q/k/v projections, gate/up projections) share one accumulator, so their X^T X is computed once;
    and from the second sample on the forward stops at the input of the last selected layer, since
    nothing after it (its own matmul included) feeds a statistic.
    """

    def __init__(self, max_hessian_tokens: int | None) -> None:
        self.max_hessian_tokens = max_hessian_tokens
        self.stats: dict[str, HessianAccumulator] = {}
        self.owner: dict[str, str] = {}  # layer -> the layer whose accumulator it shares (itself when first)
        self.first_inputs: dict[str, torch.Tensor] = {}
        self.calls: list[str] = []  # the order layers ran in on the first sample
        self.stop_at: str | None = None  # the layer whose input ends the forward (set after the first sample)

    def accumulator(self, module: nn.Module) -> HessianAccumulator:
        return HessianAccumulator(weight_matrix(module).shape[1], module.weight.device, self.max_hessian_tokens)

    def hook(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        if name not in self.owner:
            same = next((other for other, seen in self.first_inputs.items() if seen is x), None)
            self.owner[name] = same or name
            if same is None:
                self.stats[name] = self.accumulator(module)
            self.first_inputs[name] = x
        if self.owner[name] == name:
            self.stats[name].add_batch(x)
        self.calls.append(name)
        if name == self.stop_at:
            raise StopForward

    def first_sample_done(self) -> None:
        self.first_inputs.clear()  # only the first sample's identities matter
        if self.calls and len(set(self.calls)) == len(self.calls):  # each layer ran once: safe to stop early
            self.stop_at = self.calls[-1]


@torch.no_grad()
def collect_statistics(
    block: nn.Module,
    layers: list[tuple[str, nn.Module]],
    inputs: list[BlockInput],
    max_hessian_tokens: int | None = None,
) -> dict[str, HessianAccumulator]:
    """Input statistics of ``layers`` (inside ``block``) over every stored input of the block."""
    collector = _LayerStatistics(max_hessian_tokens)
    handles = [module.register_forward_pre_hook(
        lambda m, args, kwargs, name=name: collector.hook(name, m, args[0] if args else next(iter(kwargs.values()))),
        with_kwargs=True) for name, module in layers]
    try:
        for index, item in enumerate(inputs):
            try:
                item.run(block)
            except StopForward:
                pass
            if index == 0:
                collector.first_sample_done()
    finally:
        for handle in handles:
            handle.remove()
    # a layer the forward never called keeps an empty accumulator (zero tokens): its solver decides
    return {name: collector.stats[collector.owner[name]] if name in collector.owner else collector.accumulator(module)
            for name, module in layers}


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
    prepare: PrepareFn | None = None,
) -> list[T]:
    """Call ``solve(name, layer, stats)`` on every selected linear layer of the decoder blocks, in order.

    With ``calibration`` [n, seqlen] the stats are each layer's ``HessianAccumulator`` gathered
    sequentially (see the module docstring), X^T X over at most ``max_hessian_tokens`` tokens (None:
    all); without calibration they are ``None`` and no forward runs.
    ``on_progress(stage + ": " + name, fraction)`` follows each layer; ``cancel()`` is asked before
    each layer and raises ``CancelledError`` (the layers already solved stay changed). ``prepare`` (see
    ``PrepareFn``) sees each block's statistics before its layers are solved.
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
            if prepare is not None and plan[index]:
                prepare(index, plan[index], stats)
            for name, module in plan[index]:
                check_cancel(cancel, f"stopped after {len(results)} of {total} layers; the model is partially "
                                     "compressed (callers work on a copy, which can be thrown away)")
                results.append(solve(name, module, stats.pop(name, None)))
                report(on_progress, f"{stage}: {name}", len(results) / total)
            if inputs and index < last:
                inputs = [item.advance(block) for item in inputs]
    finally:
        model.train(was_training)
    return results
