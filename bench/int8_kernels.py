"""One-token matmul time of the CPU kernels an int8 decode step could call, on SmolLM2-135M's shapes.

    python bench/int8_kernels.py                 # 2 threads, 400 timed calls per kernel and shape
    python bench/int8_kernels.py --threads 1

A decode step at batch 1 multiplies one activation row by each weight matrix, so what decides the
int8 speed-up is the per-call time at one row, not peak GEMM throughput. Each kernel runs on random
weights of the shapes one SmolLM2 block calls per token (q/k/v stacked, o, gate/up stacked, down) and
of the tied head; the weights stay in cache between calls here, so these figures are a kernel's
fixed cost plus its arithmetic, a lower bound on the time inside a real decode (which reads each
matrix from memory once per token). Kernels:

- fbgemm / onednn: torch's dynamic int8 linear (``quantized::linear_dynamic``: int8 weights with a
  scale per row, the activation row quantized to 8 bits at run time) on each quantized engine;
- int_mm: ``torch._int_mm`` (int8 x int8 -> int32) on an already-quantized activation row;
- int8 weight-only (bf16): ``aten._weight_int8pack_mm`` with bf16 activations (weights int8, no
  activation quantization);
- fp32: ``F.linear``, the baseline.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (out, in) of the matmuls one SmolLM2-135M block runs per token, then its tied lm_head
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}
RADIUS = 64  # codes as SqueezeLab's int8_dynamic stores them


def time_call(call: Callable[[], object], calls: int) -> float:
    """Median over 5 batches of the mean µs per call, after a warm-up."""
    with torch.inference_mode():
        for _ in range(max(10, calls // 10)):
            call()
        batches = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls // 5):
                call()
            batches.append((time.perf_counter() - start) / (calls // 5) * 1e6)
    return statistics.median(batches)


def dynamic_linear(engine: str, weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``quantized::linear_dynamic`` on ``engine`` with weight packed as SqueezeLab packs it, 8-bit activations."""
    from core.quantize.kernels import fbgemm_prepack as _fbgemm_prepack

    torch.backends.quantized.engine = engine
    packed = _fbgemm_prepack(weight, torch.rand(weight.shape[0]) * 1e-3 + 1e-4)
    return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)


KERNELS = ("fbgemm", "onednn", "int_mm", "int8 weight-only (bf16)", "fp32")


def build_call(kernel: str, out: int, inp: int) -> Callable[[], object] | None:
    """The one-row call of ``kernel`` on a random [out, in] weight (None: not in this torch build).
    Built just before it is timed: a weight runs on the quantized engine in force when it was packed."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randint(-RADIUS, RADIUS + 1, (out, inp), dtype=torch.int8, generator=generator)
    row = torch.randn(1, inp, generator=generator)
    if kernel in ("fbgemm", "onednn"):
        if kernel not in torch.backends.quantized.supported_engines:
            return None
        linear = dynamic_linear(kernel, weight)
        return lambda: linear(row)
    if kernel == "int_mm":
        row_int8, transposed = torch.randint(-127, 128, (1, inp), dtype=torch.int8, generator=generator), weight.t()
        return lambda: torch._int_mm(row_int8, transposed)
    if kernel == "int8 weight-only (bf16)":
        row_bf16, scales = row.bfloat16(), torch.rand(out, generator=generator).bfloat16()
        return lambda: torch.ops.aten._weight_int8pack_mm(row_bf16, weight, scales)
    fp32_weight = torch.randn(out, inp, generator=generator)
    return lambda: F.linear(row, fp32_weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=400, help="timed calls per kernel and shape (head: a tenth)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, float]] = {}
    for name, (out, inp) in SHAPES.items():
        calls = max(10, args.calls // 10) if name == "head" else args.calls
        for kernel in KERNELS:
            call = build_call(kernel, out, inp)
            if call is not None:
                rows.setdefault(kernel, {})[name] = time_call(call, calls)
    print(f"one activation row x weight [out, in]; {platform.machine()} CPU, torch {torch.__version__}, "
          f"{args.threads} thread(s); int8 codes within +-{RADIUS}; weights hot in cache; "
          "median of 5 batches, µs per call")
    names = list(SHAPES)
    print("| kernel | " + " | ".join(f"{n} {SHAPES[n][0]}x{SHAPES[n][1]}" for n in names) + " | one block (4 calls) |")
    print("|---|" + "---|" * (len(names) + 1))
    for kernel, times in rows.items():
        block = sum(times[n] for n in names if n != "head")
        print(f"| {kernel} | " + " | ".join(f"{times[n]:,.0f}" for n in names) + f" | {block:,.0f} |")


if __name__ == "__main__":
    main()
