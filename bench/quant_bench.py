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

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import job_arguments, protocol_line, recipe_for, run_jobs, step_wall_s  # noqa: E402

ASYM = {"symmetric": False, "kernel": "dequant"}
NOACT = {"act_order": False}  # GPTQ in plain column order (act-order, the engine's default, has its own jobs)
QUALITY_JOBS = {
    "rtn-w8": {"method": "rtn", "bits": 8, "kernel": "dequant"},
    "gptq-w8": {**NOACT, "method": "gptq", "bits": 8, "kernel": "dequant"},
    "rtn-w4": {"method": "rtn", "bits": 4, **ASYM},
    "gptq-w4": {**NOACT, "method": "gptq", "bits": 4, **ASYM},
    "rtn-w4g64": {"method": "rtn", "bits": 4, "group_size": 64, **ASYM},
    "gptq-w4g64": {**NOACT, "method": "gptq", "bits": 4, "group_size": 64, **ASYM},
    "rtn-w4g64-sym": {"method": "rtn", "bits": 4, "group_size": 64, "kernel": "dequant"},
    "gptq-w4g64-sym": {**NOACT, "method": "gptq", "bits": 4, "group_size": 64, "kernel": "dequant"},
    # act-order with static groups: llm-compressor's GPTQModifier default (actorder "static")
    "gptq-w4g64-sym-act": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True, "kernel": "dequant"},
    "gptq-w4g64-act": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": True, **ASYM},
    "rtn-w3g64": {"method": "rtn", "bits": 3, "group_size": 64, **ASYM},
    "gptq-w3g64": {**NOACT, "method": "gptq", "bits": 3, "group_size": 64, **ASYM},
    "rtn-w2g32": {"method": "rtn", "bits": 2, "group_size": 32, **ASYM},
    "gptq-w2g32": {**NOACT, "method": "gptq", "bits": 2, "group_size": 32, **ASYM},
}
SPEED_JOBS = {
    "fp32": None,
    "bf16": {"method": "bf16"},
    "int8-dynamic": {"method": "int8_dynamic", "lm_head": True},  # SmoothQuant 0.5 (the default)
    "int8-dynamic-nosmooth": {"method": "int8_dynamic", "lm_head": True, "smooth": 0},
    "int8-dynamic-fp32-head": {"method": "int8_dynamic"},  # lm_head (and the tied embedding) left in fp32
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


def quantized_layer_bits(row: dict) -> str:
    """Bits per weight of the quantized layers alone (codes, scales, zero points), from the measured size.

    Everything else in these models is fp32, so it takes 4 bytes a parameter; the rest is the layers'."""
    layers = (row.get("details", {}).get("steps") or [{}])[0].get("layers") or []
    quantized = sum(layer["shape"][0] * layer["shape"][1] for layer in layers if layer.get("bits"))
    if not quantized:
        return "-"
    return f"{8 * (row['size_bytes'] - 4 * (row['params'] - quantized)) / quantized:.3f}"


def quality_table(rows: dict[str, dict]) -> str:
    lines = ["| job | perplexity | weights in memory MiB | bits/weight (all) | bits/weight (quantized layers) | "
             "quantize wall s | peak RSS MiB | kernel |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['size_bytes'] / 2**20:.1f} | "
                     f"{row['bits_per_weight']:.2f} | {quantized_layer_bits(row)} | {step_wall_s(row):.0f} | "
                     f"{row['peak_rss_bytes'] / 2**20:.0f} | {row['kernel']} |")
    return "\n".join(lines)


def speed_table(rows: dict[str, dict], bandwidth: float) -> str:
    lines = ["| job | perplexity | weights MiB | prefill ms (128 tok) | decode tok/s | x fp32 | bound tok/s | kernel |",
             "|---|---|---|---|---|---|---|---|"]
    base = rows.get("fp32", {}).get("decode_tok_s")
    for name, row in rows.items():
        bound = bandwidth * 1e9 / row["size_bytes"]
        ratio = f"{row['decode_tok_s'] / base:.2f}" if base else "-"
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['size_bytes'] / 2**20:.0f} | "
                     f"{row['prefill_ms']:.0f} | {row['decode_tok_s']:.1f} | {ratio} | {bound:.0f} | {row['kernel']} |")
    loops = {r.get("details", {}).get("latency", {}).get("loop") for r in rows.values()} - {None}
    lines.append(f"\ndecode loop: {', '.join(sorted(loops))}")
    return "\n".join(lines)


def recipe_of(name: str, model_dir: str, windows: int) -> dict:
    params = QUALITY_JOBS.get(name) if name in QUALITY_JOBS else SPEED_JOBS[name]
    return recipe_for(model_dir, [{"quantize": params}] if params else None, latency=name in SPEED_JOBS,
                      windows=windows)


def main() -> None:
    jobs = [*QUALITY_JOBS, *SPEED_JOBS, *PEER_JOBS]
    args = job_arguments(__doc__.splitlines()[0], jobs, "squeezelab-quant-bench.json")
    rows = run_jobs(args, PEER_JOBS, recipe_of)
    bandwidth = read_bandwidth_gb_s()
    print(protocol_line(args.windows))
    print(quality_table({k: v for k, v in rows.items() if k not in SPEED_JOBS}))
    print(f"\nread bandwidth {bandwidth:.1f} GB/s; decode bound = bandwidth / weight bytes read per token")
    print(speed_table({k: v for k, v in rows.items() if k in SPEED_JOBS}, bandwidth))


if __name__ == "__main__":
    main()
