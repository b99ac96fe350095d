"""How fast the magnitude-threshold slider's preview answers, on SmolLM2-135M (or any model).

    python bench/threshold_preview_bench.py [--model REF]

Times the one-time precomputation (sorting |w| of every selected layer) and then the median of
`sparsity_at(threshold)` over 200 thresholds spread across the weight range, 2 threads, CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import transformers

from bench.eval_vs_plain import smollm2_gguf
from core import models
from core.prune.preview import ThresholdPreview


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="a model reference, or 'smollm2'")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(2)
    loaded = models.load(smollm2_gguf() if args.model == "smollm2" else args.model, device="cpu")
    started = time.perf_counter()
    preview = ThresholdPreview.from_model(loaded.model)
    precompute_s = time.perf_counter() - started
    top = preview.threshold_for(0.99)
    timings, overall = [], 0.0
    for index in range(200):
        threshold = top * index / 199
        started = time.perf_counter()
        overall, _per_layer = preview.sparsity_at(threshold)
        timings.append(time.perf_counter() - started)
    print(f"model {args.model}: {preview.total:,} weights in {len(preview.sorted)} layers; CPU, 2 threads")
    print(f"one-time precomputation: {precompute_s:.2f} s")
    print(f"sparsity_at: median {1000 * statistics.median(timings):.2f} ms, max {1000 * max(timings):.2f} ms "
          f"over 200 thresholds (last: t={top:.4g} -> {overall:.1%} sparsity)")


if __name__ == "__main__":
    main()
