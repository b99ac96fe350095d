"""Planning benchmarks: the atlas, planned bits against uniform widths and naive mixes, predicted against measured
perplexity, AWQ against RTN / GPTQ / llm-compressor, OWL against uniform sparsity.

    python bench/plan_bench.py                                  # protocol cpu-small: every job below, the tables
    python bench/plan_bench.py --protocol samples               # the same jobs on the sample teacher (no peers)
    python bench/plan_bench.py --jobs atlas-rtn-measured rtn-plan-3.5 rtn-attn-34 --tables
    python bench/plan_bench.py --page                           # the Plan page's slider, server side

Protocols (DESIGN.md): **cpu-small** as in ``bench/common.py`` (SmolLM2-135M; calibration 64 x 512 WikiText-2
valid, seed 0; evaluation WikiText-2 test, seqlen 512, first 64 windows); **samples**: the sample teacher,
calibration 64 x 256 of its own training text (seed 0), evaluation every held-out window of 256 tokens. Both run
2 threads, each job in its own process. Quantization is symmetric with groups of 64 and ``kernel: dequant``
(perplexity of exactly the stored codes; in-memory bytes = the stored form), block linears only (the tied
embedding stays fp32).

* ``atlas-<method>-<mode>``: the atlas of menu {2, 3, 4} bits g64, measured (KL and delta NLL on
  ``--heldout`` held-out calibration windows, one layer changed at a time) or proxy; measured atlases (and the
  proxy atlases of ``PROXY_PLANNED`` methods) are cached in ``--cache`` and planned jobs read them: RTN plans
  from the measured atlas, GPTQ and Wanda plans from the proxy one.
* ``<method>-w<bits>``: uniform; ``<method>-ends-<lo><hi>``: the first and last blocks (4 each of 30 on SmolLM2,
  1 each of 6 on the teacher) at ``hi`` bits, the rest at ``lo``; ``<method>-attn-<lo><hi>``: attention at ``hi``,
  MLP at ``lo``; ``<method>-plan-<avg>``: planned at ``avg`` stored bits per weight from options {lo, hi}
  (``{3, 4}`` from 3.25 up, else ``{2, 3}``). Both mixes give at least a quarter of the weights the higher width,
  so the plans at 3.5 and 2.5 bits are never larger than either mix.
* ``awq-w4`` / ``awq-gptq-w4``: AWQ then RTN / GPTQ; ``llmc-awq-w4``: llm-compressor's AWQModifier + RTN.
* ``<wanda|sparsegpt>-<s>`` and ``-owl-<s>``: uniform and OWL (lambda 0.08, m 5); ``llmc-sparsegpt-owl-<s>``;
  ``wanda-plan-<s>``: each layer's sparsity planned from ``atlas-wanda-proxy`` (levels 0.4 to 0.9).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import calibration_ids, in_child, load_rows, protocol_line, recipe_for  # noqa: E402

GROUP = 64
MENU_BITS = (2, 3, 4)
OWL = {"lambda": 0.08, "m": 5}
PLAN_BUDGETS = {"rtn": (2.5, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0), "gptq": (2.5, 3.5)}
SPARSITIES = (50, 60, 70)
WANDA_LEVELS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Protocol:
    """Which model, which texts and windows, and how many blocks each end of the "ends" mix takes."""

    name: str
    blocks: int
    ends: int

    def model(self) -> str:
        if self.name == "samples":
            return "sample:teacher"
        from bench.eval_vs_plain import smollm2_gguf
        from core import models

        return str(models.gguf_as_folder(models.resolve(smollm2_gguf())))

    def recipe(self, model: str, steps: list[dict] | None, windows: int) -> dict:
        if self.name != "samples":
            return recipe_for(model, steps, latency=False, windows=windows)
        return {"model": model, "steps": steps or [], "device": "cpu",
                "calibration": {"text": "default", "samples": 64, "seqlen": 256, "seed": 0},
                "evaluation": {"text": "default", "seqlen": 256, "max_windows": windows or None, "latency": False,
                               "compare_to_base": False}}

    def line(self, windows: int) -> str:
        if self.name != "samples":
            return protocol_line(windows)
        return ("protocol samples: sample:teacher fp32, CPU, 2 threads; calibration 64 x 256 of its training text "
                f"(seed 0); evaluation its held-out text, seqlen 256, {'every window' if not windows else windows}")


PROTOCOLS = {"cpu-small": Protocol("cpu-small", 30, 4), "samples": Protocol("samples", 6, 1)}


def quant(method: str, bits: int, **extra) -> dict:
    return {"method": method, "bits": bits, "group_size": GROUP, "kernel": "dequant", **extra}


def mixes(method: str, lo: int, hi: int, protocol: Protocol) -> dict[str, dict]:
    blocks, ends = protocol.blocks, protocol.ends
    edge = [f"model.layers.{i}.*" for i in (*range(ends), *range(blocks - ends, blocks))]
    return {f"{method}-ends-{lo}{hi}": quant(method, lo, overrides=[{"pattern": p, "bits": hi} for p in edge]),
            f"{method}-attn-{lo}{hi}": quant(method, lo, overrides=[{"pattern": "*.self_attn.*", "bits": hi}])}


def fixed_jobs(protocol: Protocol = PROTOCOLS["cpu-small"]) -> dict[str, dict | None]:
    """Every job whose step does not depend on an atlas: name -> quantize/prune step (None: the fp32 model)."""
    jobs: dict[str, dict | None] = {"fp32": None}
    for method in ("rtn", "gptq"):
        jobs.update({f"{method}-w{b}": {"quantize": quant(method, b)} for b in MENU_BITS})
        for lo, hi in ((3, 4), (2, 3)):
            jobs.update({name: {"quantize": step} for name, step in mixes(method, lo, hi, protocol).items()})
    jobs["awq-w4"] = {"quantize": quant("awq", 4)}
    jobs["awq-gptq-w4"] = {"quantize": quant("awq", 4, rounding="gptq")}
    for method in ("wanda", "sparsegpt"):
        for s in SPARSITIES:
            jobs[f"{method}-{s}"] = {"prune": {"method": method, "sparsity": s / 100}}
            jobs[f"{method}-owl-{s}"] = {"prune": {"method": method, "sparsity": s / 100, "owl": dict(OWL)}}
    return jobs


PEER_JOBS = {"llmc-awq-w4": {"kind": "awq", "bits": 4, "group_size": GROUP, "symmetric": True},
             **{f"llmc-sparsegpt-owl-{s}": {"kind": "sparsegpt", "sparsity": s / 100, "owl": dict(OWL)}
                for s in SPARSITIES}}
ATLAS_JOBS = [*(f"atlas-{m}-{mode}" for m in ("rtn", "gptq") for mode in ("measured", "proxy")), "atlas-wanda-proxy"]
PLAN_JOBS = [f"{m}-plan-{b}" for m, budgets in PLAN_BUDGETS.items() for b in budgets]
SPARSITY_PLAN_JOBS = [f"wanda-plan-{s}" for s in SPARSITIES]
# methods planned from their proxy atlas (kept in --cache): a measured GPTQ atlas would take hours on 2 shared cores
PROXY_PLANNED = ("gptq", "wanda")


# ---- atlases (in a child process) ----


def atlas_child(payload: dict) -> dict:
    """Build (or read) one atlas in this process; its timings, rank correlation and cache key."""
    import torch

    from core.calibration.spec import CalibrationSpec
    from core.models.loading import load
    from core.plan.menu import prune_menu, quantize_menu
    from core.plan.request import AtlasRequest, atlas_for

    torch.set_num_threads(2)
    loaded = load(payload["model"], device="cpu")
    menu = prune_menu("wanda", WANDA_LEVELS) if payload["method"] == "wanda" else \
        quantize_menu(payload["method"], MENU_BITS, (GROUP,))
    request = AtlasRequest(payload["model"], menu, payload["mode"],
                           CalibrationSpec(**payload["calibration"]), payload["heldout"], payload["heldout_tokens"])
    atlas = atlas_for(loaded.model, loaded.tokenizer, loaded.source.default_calibration_text, request,
                      payload["cache"], loaded.context_length)
    return {"key": atlas.key, "timings": atlas.timings, "spearman": atlas.spearman(), "base_nll": atlas.base_nll,
            "uniform_nll": atlas.uniform_nll, "measured": atlas.measured, "heldout": payload["heldout"],
            "heldout_tokens": payload["heldout_tokens"], "cache": payload["cache"],
            "seqlen": atlas.settings.get("seqlen")}


def run_atlas(name: str, model: str, args: argparse.Namespace) -> dict:
    _, method, mode = name.split("-")
    # a proxy atlas is timed in a cache of its own (the measured one, which holds a proxy too, would answer it)
    shared = mode == "measured" or method in PROXY_PLANNED
    cache = str(args.cache) if shared else tempfile.mkdtemp(prefix="squeezelab-atlas-")
    payload = {"model": model, "method": method, "mode": mode, "heldout": args.heldout,
               "heldout_tokens": args.heldout_tokens, "cache": cache,
               "calibration": args.protocol.recipe(model, None, args.windows)["calibration"]}
    return in_child({"atlas": payload}, Path(__file__))


# ---- planned jobs ----


def planned_step(name: str, rows: dict, cache: Path) -> dict:
    """The quantize step planned for ``<method>-plan-<avg>`` from its method's atlas."""
    from core.plan.cache import load_atlas
    from core.plan.menu import Budget
    from core.plan.planner import Planner, step_params

    method, _, avg = name.split("-")
    avg_bits = float(avg)
    mode = "proxy" if method in PROXY_PLANNED else "measured"
    atlas = load_atlas(cache, rows[f"atlas-{method}-{mode}"]["key"])
    lo, hi = (3, 4) if avg_bits >= 3.25 else (2, 3)
    sub = atlas.restricted([MENU_BITS.index(lo), MENU_BITS.index(hi)])
    plan = Planner(sub, mode).plan(Budget("avg_bits", avg_bits, mode))
    return {"quantize": step_params(plan, "quantize", quant(method, hi), sub.key, mode)}


def planned_sparsity_step(name: str, rows: dict, cache: Path) -> dict:
    """The prune step planned for ``wanda-plan-<s>`` from the Wanda proxy atlas."""
    from core.plan.cache import load_atlas
    from core.plan.menu import Budget
    from core.plan.planner import Planner, step_params

    atlas = load_atlas(cache, rows["atlas-wanda-proxy"]["key"])
    plan = Planner(atlas, "proxy").plan(Budget("sparsity", int(name.rsplit("-", 1)[1]) / 100))
    return {"prune": step_params(plan, "prune", {"method": "wanda"}, atlas.key, "proxy")}


def recipe_of(name: str, model: str, args: argparse.Namespace, rows: dict) -> dict:
    if name in SPARSITY_PLAN_JOBS:
        step = planned_sparsity_step(name, rows, args.cache)
    else:
        step = planned_step(name, rows, args.cache) if name in PLAN_JOBS else fixed_jobs(args.protocol)[name]
    return args.protocol.recipe(model, [step] if step else None, args.windows)


def peer_row(name: str, model: str, args: argparse.Namespace, work: Path) -> dict:
    """One llm-compressor job in its own venv, its saved model evaluated by ours on the same windows."""
    from bench.peer_llmcompressor import ensure_venv, run_peer

    ensure_venv()
    ids_file = work / "calibration_ids.json"
    if not ids_file.exists():
        ids_file.write_text(json.dumps(calibration_ids(model)))
    peer = run_peer({"model_dir": model, "out_dir": str(work / name), "calibration_ids": str(ids_file),
                     "recipe": PEER_JOBS[name], "threads": 2})
    row = in_child(args.protocol.recipe(str(work / name), None, args.windows))
    row.update(step_wall_s=peer["wall_s"], peak_rss_bytes=peer["peak_rss_bytes"], peer=peer, windows=args.windows)
    return row


def run_all(args: argparse.Namespace) -> dict[str, dict]:
    model = args.protocol.model()
    rows = load_rows(args.out)
    work = Path(tempfile.mkdtemp(prefix="squeezelab-peer-"))
    for name in args.jobs:
        started = time.perf_counter()
        if name in ATLAS_JOBS:
            rows[name] = run_atlas(name, model, args)
        elif name in PEER_JOBS:
            if args.protocol.name == "samples":  # the peers are compared on SmolLM2 only
                continue
            rows[name] = peer_row(name, model, args, work)
        else:
            rows[name] = in_child(recipe_of(name, model, args, rows))
            rows[name]["windows"] = args.windows
        shown = rows[name].get("perplexity") or rows[name].get("timings", {}).get("total_s")
        print(f"{name}: {shown:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
        args.out.write_text(json.dumps(rows, indent=1))
    return rows


def main() -> None:
    from bench.plan_tables import page_timing, slider_timing, tables

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    order = ["fp32", *ATLAS_JOBS, *fixed_jobs(), *PLAN_JOBS, *SPARSITY_PLAN_JOBS, *PEER_JOBS]
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="cpu-small")
    parser.add_argument("--jobs", nargs="*", default=list(dict.fromkeys(order)))
    parser.add_argument("--windows", type=int, default=None, help="evaluation windows (cpu-small: 64; samples: all)")
    parser.add_argument("--heldout", type=int, default=2, help="held-out calibration windows of a measured atlas")
    parser.add_argument("--heldout-tokens", type=int, default=None, help="tokens scored of each held-out window")
    parser.add_argument("--cache", type=Path, default=None, help="where atlases are kept (default: under the temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="the rows, as JSON (default: under the temp dir)")
    parser.add_argument("--tables", action="store_true", help="only print the tables of the rows in --out")
    parser.add_argument("--page", action="store_true", help="only time the Plan page's slider (server side)")
    args = parser.parse_args()
    if args.page:
        print(page_timing(30))
        return
    args.protocol = PROTOCOLS[args.protocol]
    suffix = "" if args.protocol.name == "cpu-small" else f"-{args.protocol.name}"
    args.windows = args.windows if args.windows is not None else (64 if not suffix else 0)
    args.cache = args.cache or Path(tempfile.gettempdir()) / f"squeezelab-plan-bench-cache{suffix}"
    args.out = args.out or Path(tempfile.gettempdir()) / f"squeezelab-plan-bench{suffix}.json"
    rows = load_rows(args.out) if args.tables else run_all(args)
    windows = next((row["windows"] for row in rows.values() if "windows" in row), args.windows)
    print(tables(rows, args.protocol.line(windows), args.cache))
    print(slider_timing(rows, args.cache))


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    payload = json.loads(sys.argv[2])
    print(json.dumps(atlas_child(payload["atlas"])))
elif __name__ == "__main__":
    main()
