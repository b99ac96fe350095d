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
PEER_JOBS = {
    "llmc-sparsegpt-50": {"kind": "sparsegpt", "sparsity": 0.5, "mask_structure": "0:0"},
    "llmc-wanda-50": {"kind": "wanda", "sparsity": 0.5, "mask_structure": "0:0"},
    "llmc-sparsegpt-24": {"kind": "sparsegpt", "sparsity": 0.5, "mask_structure": "2:4"},
}


def table(rows: dict[str, dict]) -> str:
    lines = ["| job | perplexity | non-zero params | params | prune wall s | peak RSS MiB | decode tok/s | kernel |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        decode = f"{row['decode_tok_s']:.1f}" if row.get("decode_tok_s") else "-"
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['nonzero_params']:,} | {row['params']:,} | "
                     f"{step_wall_s(row):.0f} | {row['peak_rss_bytes'] / 2**20:.0f} | {decode} | {row['kernel']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="*", default=[*PRUNE_JOBS, *PEER_JOBS])
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-prune-bench.json")
    args = parser.parse_args()
    from core import models

    model_dir = str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    rows = load_rows(args.out)
    work = Path(tempfile.mkdtemp(prefix="squeezelab-peer-"))
    for name in args.jobs:
        started = time.perf_counter()
        if name in PEER_JOBS:
            if args.no_peer:
                continue
            rows[name] = peer_row(name, PEER_JOBS[name], model_dir, work)
        else:
            timed = name.startswith(("mlp", "layers")) or name == "dense"  # structured: the model really shrinks
            steps = [{"prune": PRUNE_JOBS[name]}] if PRUNE_JOBS[name] else None
            rows[name] = in_child(recipe_for(model_dir, steps, latency=timed))
        print(f"{name}: perplexity {rows[name]['perplexity']:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    print(PROTOCOL)
    print(table(rows))


if __name__ == "__main__":
    main()
