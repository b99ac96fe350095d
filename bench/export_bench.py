"""Export on SmolLM2-135M, protocol "cpu-small": artifact sizes, perplexity before export and after reload, times.

    python bench/export_bench.py                                   # every job below, then the tables
    python bench/export_bench.py --jobs fp16-hf w4g64-gguf         # some of them
    python bench/export_bench.py --jobs fp16-hf --windows 2        # a quick smoke run (not the protocol)

Each variant runs in its own process: the model is made once, evaluated once (WikiText-2 test, seqlen
512, first 64 windows, 2 threads: "ppl before export"), then exported in each of its formats; every
artifact is reloaded from disk the way a user loads it and evaluated again on the same 64 windows
(``export.check_windows``). Quantized variants use ``kernel: dequant``, so "before" is the exact fp32
math of the stored weights, like the reloaded model. Peak RSS is the variant's process.

Variants: fp32 (the GGUF's dequantized weights), written as fp32 and as fp16 (a cast at export: "before" is
the fp32 model, "after" the fp16 file scored in fp32 math), int8 (RTN 8-bit per channel, symmetric,
lm_head and the tied embedding at 8 bits), w4g64 (RTN 4-bit groups of 64, symmetric, lm_head and the tied
embedding at 8 bits per channel), pruned50 (magnitude 50% unstructured, written fp16, dense vs sparse hf folder).
"Promised" is what the stored schemes add up to (tensor bytes, before file headers and tokenizer files).
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

from bench.common import PROTOCOL, in_child, load_rows, recipe_for  # noqa: E402
from bench.eval_vs_plain import smollm2_gguf  # noqa: E402

EMBED8 = {"lm_head": True, "overrides": [{"pattern": "lm_head", "bits": 8, "group_size": 0}], "kernel": "dequant"}
PRUNE = {"prune": {"method": "magnitude", "sparsity": 0.5}}
# the model each job exports; jobs of one variant share it and its "before" evaluation
VARIANTS: dict[str, list[dict]] = {
    "fp32": [],
    "int8": [{"quantize": {"method": "rtn", "bits": 8, "lm_head": True, "kernel": "dequant"}}],
    "w4g64": [{"quantize": {"method": "rtn", "bits": 4, "group_size": 64, **EMBED8}}],
    "pruned50": [PRUNE],
}
FORMATS = ("hf", "compressed-tensors", "gguf")
# fp16 artifacts are written from the fp32 model (a 16-bit CPU matmul is ~12x slower than fp32 here, so a
# model cast in memory could not be evaluated in time); the reload is scored in fp32 math on fp16 values
FP16 = {"hf": {"dtype": "fp16"}, "compressed-tensors": {"dtype": "fp16"}, "gguf": {"gguf_type": "F16"}}
JOBS: dict[str, tuple[str, dict]] = {
    **{f"fp32-{fmt}": ("fp32", {"format": fmt, **({"gguf_type": "F32"} if fmt == "gguf" else {})}) for fmt in FORMATS},
    **{f"fp16-{fmt}": ("fp32", {"format": fmt, **FP16[fmt]}) for fmt in FORMATS},
    **{f"{variant}-{fmt}": (variant, {"format": fmt}) for variant in ("int8", "w4g64") for fmt in FORMATS},
    "pruned50-dense": ("pruned50", {"format": "hf", "sparse": False, "dtype": "fp16"}),
    "pruned50-sparse": ("pruned50", {"format": "hf", "sparse": "auto", "dtype": "fp16"}),
}


def run_variant(recipe: dict, exports: dict[str, dict]) -> dict[str, dict]:
    """In a child: make the recipe's model once, evaluate it once, export it as each of ``exports`` says.

    The rows have the shape of a pipeline row with an export (``details.export``)."""
    import resource

    import torch

    from core import models
    from core.evaluate import measurement as evaluation
    from core.export import ExportSpec, export_model
    from core.recipe import Recipe, pipeline

    torch.set_num_threads(2)
    parsed = Recipe.from_dict(recipe)
    loaded = models.load(parsed.model, device=parsed.device)
    model = models.clone(loaded.model) if parsed.steps else loaded.model
    context = pipeline.step_context(parsed, loaded, None, None)
    started = time.perf_counter()
    reports = [step.parsed.apply(model, context) for step in parsed.steps]
    step_s = time.perf_counter() - started
    measured = evaluation.measure(model, loaded, parsed.evaluation)
    rows = {}
    for name, export in exports.items():
        result = export_model(model, loaded.tokenizer, ExportSpec.from_dict(export), measured.windows,
                              recipe=parsed.to_dict(), metrics=measured.row_fields(),
                              check_text=loaded.tokenizer.decode(measured.windows[0]),
                              perplexity_before=measured.quality.perplexity)
        rows[name] = {"perplexity": measured.quality.perplexity, "step_wall_s": step_s,
                      "details": {"export": result.as_dict(), "steps": reports}}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {name: {**row, "peak_rss_bytes": peak} for name, row in rows.items()}


def variant_jobs(names: list[str], model_dir: str, work: Path, windows: int | None) -> dict[str, tuple[dict, dict]]:
    """{variant: (recipe, {job: export section})} for the chosen jobs, in the order first named."""
    from core.export import ExportSpec

    grouped: dict[str, tuple[dict, dict]] = {}
    for name in names:
        variant, export = JOBS[name]
        ExportSpec.from_dict(export)  # a bad section fails here, before any model is made
        if variant not in grouped:
            recipe = recipe_for(model_dir, VARIANTS[variant], latency=False)
            if windows is not None:  # a smoke run: fewer windows than the protocol's 64
                recipe["evaluation"]["max_windows"] = windows
            grouped[variant] = (recipe, {})
        grouped[variant][1][name] = {**export, "path": str(work / name), "check_windows": 0}  # 0: every window
    return grouped


def mb(value: float) -> str:
    return f"{value / 1e6:.1f}"


def table(rows: dict[str, dict]) -> str:
    reference = rows.get("fp16-hf", {}).get("details", {}).get("export", {}).get("size_bytes")
    lines = ["| job | format | artifact MB | weights MB | promised MB | weights / promised | of the fp16 hf artifact | "
             "ppl before export | ppl after reload | change | check | export s | reload s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        export = row["details"]["export"]
        share = f"{export['size_bytes'] / reference:.1%}" if reference else "n/a"
        change = export["perplexity_after"] / export["perplexity_before"] - 1
        lines.append(
            f"| {name} | {export['format']}{' ' + export['gguf_file'] if export.get('gguf_file') else ''} | "
            f"{mb(export['size_bytes'])} | {mb(export['weights_bytes'])} | {mb(export['promised_bytes'])} | "
            f"{export['weights_bytes'] / export['promised_bytes']:.3f} | {share} | "
            f"{export['perplexity_before']:.3f} | {export['perplexity_after']:.3f} | {change:+.3%} | "
            f"{'passed' if export['check_passed'] else 'FAILED'} | {export['export_s']:.1f} | "
            f"{export['reload_s']:.1f} |")
    return "\n".join(lines)


def criteria(rows: dict[str, dict]) -> list[str]:
    """The issue's "done when" checks on whatever jobs ran."""
    out = []
    exports = {name: row["details"]["export"] for name, row in rows.items()}
    within = [abs(e["perplexity_after"] / e["perplexity_before"] - 1) <= 0.005 for e in exports.values()]
    out.append(f"perplexity after reload within 0.5% of before export: {sum(within)}/{len(within)} jobs")
    dense = exports.get("fp16-hf")
    for fmt in FORMATS:
        small = exports.get(f"w4g64-{fmt}")
        if small and dense:
            share = small["size_bytes"] / dense["size_bytes"]
            out.append(f"w4g64 {fmt} artifact / fp16 hf artifact: {share:.1%} ({'<=' if share <= 0.35 else '>'} 35%)")
    promised = [abs(e["weights_bytes"] / e["promised_bytes"] - 1) <= 0.05 for e in exports.values()]
    out.append(f"weights within 5% of what the schemes promise: {sum(promised)}/{len(promised)} jobs")
    if "pruned50-sparse" in exports and "pruned50-dense" in exports:
        sparse, dense = exports["pruned50-sparse"]["size_bytes"], exports["pruned50-dense"]["size_bytes"]
        out.append(f"50%-pruned fp16: sparse {mb(sparse)} MB vs dense {mb(dense)} MB ({sparse / dense:.1%})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="*", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--windows", type=int, default=None, help="evaluation windows (default: the protocol's 64)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-export-bench.json")
    parser.add_argument("--keep", action="store_true", help="keep the exported artifacts (printed path)")
    args = parser.parse_args()
    from core import models

    model_dir = str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    rows = load_rows(args.out)
    work = Path(tempfile.mkdtemp(prefix="squeezelab-export-bench-"))
    for variant, (recipe, exports) in variant_jobs(args.jobs, model_dir, work, args.windows).items():
        started = time.perf_counter()
        done = in_child([recipe, exports], script=Path(__file__))
        rows.update(done)
        for name, row in done.items():
            export = row["details"]["export"]
            print(f"{name}: {mb(export['size_bytes'])} MB, perplexity {export['perplexity_before']:.3f} -> "
                  f"{export['perplexity_after']:.3f}", flush=True)
        print(f"{variant}: {time.perf_counter() - started:.0f} s", flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
        if not args.keep:
            import shutil

            for name in exports:
                shutil.rmtree(work / name, ignore_errors=True)
    windows = f"first {args.windows} windows (smoke run, not the protocol)" if args.windows else "64 windows"
    print(f"{PROTOCOL}; export check on the same {windows}")
    print(table({name: rows[name] for name in JOBS if name in rows}))
    print("\n".join(criteria({name: rows[name] for name in JOBS if name in rows})))
    if args.keep:
        print(f"artifacts kept in {work}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(run_variant(*json.loads(sys.argv[2]))))
    else:
        main()
