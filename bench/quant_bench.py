"""Quantization on SmolLM2-135M, protocol "cpu-small": quality, size and speed, beside llm-compressor.

    python bench/quant_bench.py                        # every job below, then the tables
    python bench/quant_bench.py --jobs gptq-w4g64 llmc-gptq-w4g64-sym

Protocol cpu-small as in ``bench/common.py`` (the same calibration and evaluation windows as the
pruning bench, 2 threads, each job in its own process). Quality jobs dequantize on the fly (``kernel: dequant``),
so their perplexity is that of the exact fp32 dequantized weights; speed jobs use the kernel named in
their row and carry the perplexity of exactly what was timed. Decode: batch 1, 128-token prompt,
64 new tokens, KV cache, a warm-up then the median of 5. The decode bound is this machine's read
bandwidth (measured here: a sum over a 1 GiB tensor) divided by the bytes of weights one token reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import PROTOCOL, in_child, load_rows, peer_row, recipe_for, step_wall_s  # noqa: E402
from bench.eval_vs_plain import smollm2_gguf  # noqa: E402

ASYM = {"symmetric": False, "kernel": "dequant"}
QUALITY_JOBS = {
    "rtn-w8": {"method": "rtn", "bits": 8, "kernel": "dequant"},
    "gptq-w8": {"method": "gptq", "bits": 8, "kernel": "dequant"},
    "rtn-w4": {"method": "rtn", "bits": 4, **ASYM},
    "gptq-w4": {"method": "gptq", "bits": 4, **ASYM},
    "rtn-w4g64": {"method": "rtn", "bits": 4, "group_size": 64, **ASYM},
    "gptq-w4g64": {"method": "gptq", "bits": 4, "group_size": 64, **ASYM},
    "rtn-w4g64-sym": {"method": "rtn", "bits": 4, "group_size": 64, "kernel": "dequant"},
    "gptq-w4g64-sym": {"method": "gptq", "bits": 4, "group_size": 64, "kernel": "dequant"},
    "rtn-w3g64": {"method": "rtn", "bits": 3, "group_size": 64, **ASYM},
    "gptq-w3g64": {"method": "gptq", "bits": 3, "group_size": 64, **ASYM},
    "rtn-w2g32": {"method": "rtn", "bits": 2, "group_size": 32, **ASYM},
    "gptq-w2g32": {"method": "gptq", "bits": 2, "group_size": 32, **ASYM},
}
SPEED_JOBS = {
    "fp32": None,
    "bf16": {"method": "bf16"},
    "int8-dynamic": {"method": "int8_dynamic"},
    "int4-g64": {"method": "rtn", "bits": 4, "group_size": 64, "symmetric": False, "kernel": "int4_weight_only"},
}
PEER_JOBS = {
    "llmc-gptq-w4g64-sym": {"kind": "gptq", "bits": 4, "group_size": 64, "symmetric": True},
    "llmc-gptq-w4g64": {"kind": "gptq", "bits": 4, "group_size": 64, "symmetric": False},
    "llmc-rtn-w4g64-sym": {"kind": "rtn", "bits": 4, "group_size": 64, "symmetric": True},
    "llmc-rtn-w4g64": {"kind": "rtn", "bits": 4, "group_size": 64, "symmetric": False},
}


def read_bandwidth_gb_s(gib: int = 1, repeats: int = 5) -> float:
    """Best-of read bandwidth of this machine (GB/s): a float32 sum over ``gib`` GiB, 2 threads."""
    import torch

    torch.set_num_threads(2)
    data = torch.ones(gib * 2**30 // 4)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.numel() * 4 / best / 1e9


def quality_table(rows: dict[str, dict]) -> str:
    lines = ["| job | perplexity | weights in memory MiB | bits/weight | quantize wall s | peak RSS MiB | kernel |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['size_bytes'] / 2**20:.1f} | "
                     f"{row['bits_per_weight']:.2f} | {step_wall_s(row):.0f} | {row['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{row['kernel']} |")
    return "\n".join(lines)


def speed_table(rows: dict[str, dict], bandwidth: float) -> str:
    lines = ["| job | perplexity | weights MiB | prefill ms (128 tok) | decode tok/s | bound tok/s | kernel |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        bound = bandwidth * 1e9 / row["size_bytes"]
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['size_bytes'] / 2**20:.0f} | "
                     f"{row['prefill_ms']:.0f} | {row['decode_tok_s']:.1f} | {bound:.0f} | {row['kernel']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="*", default=[*QUALITY_JOBS, *SPEED_JOBS, *PEER_JOBS])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-quant-bench.json")
    args = parser.parse_args()
    from core import models

    model_dir = str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    rows = load_rows(args.out)
    work = Path(tempfile.mkdtemp(prefix="squeezelab-peer-"))
    for name in args.jobs:
        started = time.perf_counter()
        if name in PEER_JOBS:
            rows[name] = peer_row(name, PEER_JOBS[name], model_dir, work)
        else:
            params = QUALITY_JOBS.get(name) if name in QUALITY_JOBS else SPEED_JOBS[name]
            steps = [{"quantize": params}] if params else None
            rows[name] = in_child(recipe_for(model_dir, steps, latency=name in SPEED_JOBS))
        print(f"{name}: perplexity {rows[name]['perplexity']:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    bandwidth = read_bandwidth_gb_s()
    print(PROTOCOL)
    print(quality_table({k: v for k, v in rows.items() if k not in SPEED_JOBS}))
    print(f"\nread bandwidth {bandwidth:.1f} GB/s; decode bound = bandwidth / weight bytes read per token")
    print(speed_table({k: v for k, v in rows.items() if k in SPEED_JOBS}, bandwidth))


if __name__ == "__main__":
    main()
