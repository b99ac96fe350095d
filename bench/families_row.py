"""SmolLM2-135M through the family matrix's row (README's support table), protocol cpu-small: each technique's
figure now, beside the figure BENCHMARKS.md recorded for the same job before the per-family work (they must
not move: SmolLM2's tokenizer adds no BOS, and every per-family change is exact for a Llama).

    python bench/families_row.py                      # every cell (about 40 minutes on 2 idle cores)
    python bench/families_row.py --cells dense rtn    # some cells

Each cell is one job of an existing bench script, run the way that script runs it (its own process, 2 threads):
``bench/prune_bench.py``, ``bench/quant_bench.py`` and ``bench/plan_bench.py`` (AWQ, recorded on the first 16
windows), the layer-dropped student of ``bench/distill_bench.py`` before training (its 200 KD steps take over
an hour and are not rerun here), and the 4-bit g64 export of ``bench/export_bench.py`` (perplexity before export
and after reload from each format). The table says per cell where the recorded figure comes from.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import in_child, protocol_line  # noqa: E402

# cell -> (script, job, recorded perplexity, where it is recorded, windows)
CELLS: dict[str, tuple[str, str, float, str, int]] = {
    "dense": ("prune", "dense", 29.93, "§4 dense", 64),
    "magnitude": ("prune", "magnitude-50", 513.97, "§4 magnitude 50%", 64),
    "wanda": ("prune", "wanda-50", 63.23, "§4 Wanda 50%", 64),
    "sparsegpt-2:4": ("prune", "sparsegpt-24", 80.35, "§4 SparseGPT 2:4", 64),
    "structured-mlp": ("prune", "mlp-25-act", 47.72, "§4 mlp-25-act", 64),
    "layers": ("prune", "layers-25", 124.61, "§4 layers-25", 64),
    "rtn": ("quant", "rtn-w4g64", 39.44, "§5 rtn-w4g64", 64),
    "gptq": ("quant", "gptq-w4g64", 35.94, "§5 gptq-w4g64", 64),
    "awq": ("plan", "awq-w4", 51.71, "§11 AWQ W4 g64 (16 windows)", 16),
    "int8+smoothquant": ("quant", "int8-dynamic", 30.88, "§5 int8-dynamic (lm_head int8)", 64),
    "distill-student": ("distill", "layer-drop", 797695.44, "§6 student before KD", 64),
    "export-hf": ("export", "w4g64-hf", 42.039, "§7 w4g64 before export / after reload", 64),
    "export-compressed-tensors": ("export", "w4g64-compressed-tensors", 42.038, "§7 w4g64 after reload", 64),
    "export-gguf": ("export", "w4g64-gguf", 42.039, "§7 w4g64 after reload (Q4_0)", 64),
}


def model_dir() -> str:
    from bench.eval_vs_plain import smollm2_gguf
    from core import models

    return str(models.gguf_as_folder(models.resolve(smollm2_gguf())))


def job_recipe(script: str, job: str, folder: str, windows: int) -> dict:
    if script == "prune":
        from bench.prune_bench import recipe_of
        recipe = recipe_of(job, folder, windows)
    elif script == "quant":
        from bench.quant_bench import recipe_of
        recipe = recipe_of(job, folder, windows)
    else:  # plan
        from bench.plan_bench import PROTOCOLS, fixed_jobs
        recipe = PROTOCOLS["cpu-small"].recipe(folder, [fixed_jobs()[job]], windows)
    recipe["evaluation"]["latency"] = False  # the row checks quality; speed has its own benches
    return recipe


def distill_child(payload: dict) -> dict:
    """The layer-dropped student of bench/distill_bench.py (half the blocks, evenly spaced), before training."""
    import torch

    from core import data, models
    from core.distill import DistillSpec, build_student_, evenly_spaced_layers
    from core.evaluate import evaluate_quality
    from core.layers import decoder_blocks

    torch.set_num_threads(2)
    loaded = models.load(payload["model"], device="cpu")
    total = len(decoder_blocks(loaded.model)[1])
    spec = DistillSpec(student="layer_drop", keep_layers=list(evenly_spaced_layers(total, total // 2)))
    student, _ = build_student_(loaded.model, spec)
    ids = data.tokenize(loaded.tokenizer, data.wikitext2_test_text())
    windows = data.windows(ids, 512, payload["windows"], bos=data.added_bos(loaded.tokenizer))
    return {"perplexity": evaluate_quality(student, windows).perplexity}


def export_rows(jobs: list[str], out: Path) -> dict[str, dict]:
    """bench/export_bench.py's jobs (the protocol's 64 windows), run by that script into ``out``; its rows."""
    command = [sys.executable, str(ROOT / "bench" / "export_bench.py"), "--jobs", *jobs, "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def run_cells(names: list[str], out: Path) -> dict[str, dict]:
    rows = json.loads(out.read_text()) if out.exists() else {}
    folder = model_dir()
    exports = [name for name in names if CELLS[name][0] == "export"]
    for name in (n for n in names if CELLS[n][0] != "export"):
        script, job, _, _, windows = CELLS[name]
        started = time.perf_counter()
        if script == "distill":
            rows[name] = in_child({"model": folder, "windows": windows}, Path(__file__))
        else:
            rows[name] = in_child(job_recipe(script, job, folder, windows))
        rows[name]["wall_s"] = time.perf_counter() - started
        print(f"{name}: {rows[name]['perplexity']:.2f} ({rows[name]['wall_s']:.0f} s)", flush=True)
        out.write_text(json.dumps(rows, indent=1))
    if exports:
        found = export_rows([CELLS[name][1] for name in exports], out.with_suffix(".export.json"))
        for name in exports:
            export = found[CELLS[name][1]]["details"]["export"]
            rows[name] = {"perplexity": export["perplexity_after"], "before_export": export["perplexity_before"],
                          "check": "passed" if export["check_passed"] else "FAILED"}
        out.write_text(json.dumps(rows, indent=1))
    return rows


def table(rows: dict[str, dict]) -> str:
    lines = ["| cell | job | windows | perplexity now | recorded | change | recorded in |",
             "|---|---|---|---|---|---|---|"]
    for name, (_, job, recorded, where, windows) in CELLS.items():
        if name in rows:
            now = rows[name]["perplexity"]
            extra = f" (before export {rows[name]['before_export']:.3f}, check {rows[name]['check']})" \
                if "before_export" in rows[name] else ""
            lines.append(f"| {name} | {job} | {windows} | {now:.3f}{extra} | {recorded} | "
                         f"{(now / recorded - 1) * 100:+.3f}% | {where} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="*", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-families-row.json")
    parser.add_argument("--tables", action="store_true", help="print the table of --out without running")
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.tables else run_cells(args.cells, args.out)
    print(protocol_line(64) + " (AWQ: first 16)")
    print(table(rows))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    print(json.dumps(distill_child(json.loads(sys.argv[2]))))
elif __name__ == "__main__":
    main()
