"""Pruning on SmolLM2-135M, protocol "cpu-small": ours side by side with llm-compressor.

    python bench/prune_bench.py                       # every job below, then the table
    python bench/prune_bench.py --jobs wanda-50 sparsegpt-24 --no-peer

Protocol cpu-small as in ``bench/common.py``: calibration 64 random 512-token windows of WikiText-2
valid (seed 0), evaluation the first 64 windows of 512 tokens of WikiText-2 test, 2 threads, each job
in its own process. The peer (llm-compressor) prunes in its own virtual environment with the same
calibration token ids; its saved model is evaluated by our evaluator on the same windows. Structured
jobs and the dense model also time CPU decode (batch 1, 128-token prompt, 64 new tokens).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import job_arguments, protocol_line, recipe_for, run_jobs, step_wall_s  # noqa: E402

PRUNE_JOBS = {
    "dense": None,
    "magnitude-50": {"method": "magnitude", "sparsity": 0.5},
    "wanda-50": {"method": "wanda", "sparsity": 0.5},
    "sparsegpt-50": {"method": "sparsegpt", "sparsity": 0.5},
    "magnitude-24": {"method": "magnitude", "pattern": "2:4"},
    "wanda-24": {"method": "wanda", "pattern": "2:4"},
    "sparsegpt-24": {"method": "sparsegpt", "pattern": "2:4"},
    "mlp-25": {"method": "structured", "target": "mlp_channels", "fraction": 0.25},
    "mlp-50": {"method": "structured", "target": "mlp_channels", "fraction": 0.5},
    "layers-25": {"method": "structured", "target": "layers", "fraction": 0.25},
    "mlp-25-act": {"method": "structured", "target": "mlp_channels", "fraction": 0.25, "importance": "activation_norm"},
    "mlp-50-act": {"method": "structured", "target": "mlp_channels", "fraction": 0.5, "importance": "activation_norm"},
}
# jobs whose model really shrinks: their decode speed is timed (and bench/decode_pairs.py offers them)
STRUCTURED_JOBS = tuple(name for name, params in PRUNE_JOBS.items() if params and params["method"] == "structured")
PEER_JOBS = {
    "llmc-sparsegpt-50": {"kind": "sparsegpt", "sparsity": 0.5, "mask_structure": "0:0"},
    "llmc-wanda-50": {"kind": "wanda", "sparsity": 0.5, "mask_structure": "0:0"},
    "llmc-sparsegpt-24": {"kind": "sparsegpt", "sparsity": 0.5, "mask_structure": "2:4"},
    "llmc-wanda-24": {"kind": "wanda", "sparsity": 0.5, "mask_structure": "2:4"},
}


def table(rows: dict[str, dict]) -> str:
    lines = ["| job | perplexity | non-zero params | params | prune wall s | peak RSS MiB | decode tok/s | kernel |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        decode = f"{row['decode_tok_s']:.1f}" if row.get("decode_tok_s") else "-"
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['nonzero_params']:,} | {row['params']:,} | "
                     f"{step_wall_s(row):.0f} | {row['peak_rss_bytes'] / 2**20:.0f} | {decode} | {row['kernel']} |")
    return "\n".join(lines)


def recipe_of(name: str, model_dir: str, windows: int) -> dict:
    timed = name in STRUCTURED_JOBS or name == "dense"
    steps = [{"prune": PRUNE_JOBS[name]}] if PRUNE_JOBS[name] else None
    return recipe_for(model_dir, steps, latency=timed, windows=windows)


def main() -> None:
    args = job_arguments(__doc__.splitlines()[0], [*PRUNE_JOBS, *PEER_JOBS], "squeezelab-prune-bench.json")
    rows = run_jobs(args, PEER_JOBS, recipe_of)
    print(protocol_line(args.windows))
    print(table(rows))


if __name__ == "__main__":
    main()
