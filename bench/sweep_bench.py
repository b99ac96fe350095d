"""Sweeps: a grid on SmolLM2-135M (protocol cpu-small, 16 windows), locally and on a local Ray cluster, and a
30-trial Optuna search on the samples against the grid over the same space.

    python bench/sweep_bench.py grid                    # 18 trials, this process (about an hour on 2 cores)
    python bench/sweep_bench.py grid --backend ray      # the same grid on a local Ray cluster of this machine
    python bench/sweep_bench.py grid --smoke            # two RTN trials: checks the script, not a figure to keep
    python bench/sweep_bench.py search                  # the samples: a 56-trial grid, then a 30-trial TPE search

grid: RTN and GPTQ x bits {3, 4, 8} x group {32, 64}, plus magnitude / Wanda / SparseGPT x sparsity {0.3, 0.5};
protocol cpu-small (``bench/common.py``) with the first 16 evaluation windows, ``compare_to_base`` off (the base
model is measured once, as the sweep's base row); the constraint is perplexity <= 1.10 x base. The local
backend runs trials one after another with 2 torch threads; the Ray backend runs two 1-CPU trials at once
(one torch thread each) and prints the largest perplexity difference to the local run of the same trial and
Ray's per-trial overhead (the driver's submit-to-result time less the trial's own wall time).

search: the sample teacher, protocol samples (its held-out text, every window at its context of 256
tokens), magnitude pruning then RTN (group 32) over sparsity 0.0-0.7 (steps of 0.1) x bits 2-8: the full
grid (56 trials) gives the reference Pareto front; a 30-trial multi-objective TPE search over the same space
reports after how many trials its front reaches the grid's (the share of the grid's front it has found, and
the hypervolume of its front relative to the grid's).

Sweeps resume: rerunning a command skips trials already in ``--results-dir``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import protocol_line, recipe_for  # noqa: E402

GRID = [
    {"steps.0.quantize.method": ["rtn", "gptq"], "steps.0.quantize.bits": [3, 4, 8],
     "steps.0.quantize.group_size": [32, 64]},
    {"steps.0": [{"prune": {"method": m}} for m in ("magnitude", "wanda", "sparsegpt")],
     "steps.0.prune.sparsity": [0.3, 0.5]},
]
SMOKE_GRID = [{"steps.0.quantize.method": ["rtn"], "steps.0.quantize.bits": [4, 8],
               "steps.0.quantize.group_size": [64]}]
SAMPLE_SPACE = {"steps.0.prune.sparsity": [round(0.1 * i, 1) for i in range(8)],
                "steps.1.quantize.bits": list(range(2, 9))}


def smollm2_folder() -> str:
    from bench.eval_vs_plain import smollm2_gguf
    from core import models

    return str(models.gguf_as_folder(models.resolve(smollm2_gguf())))


def grid_spec(args: argparse.Namespace) -> dict:
    base = recipe_for(smollm2_folder(), [{"quantize": {"method": "rtn", "bits": 4, "group_size": 64}}],
                      latency=False, windows=args.windows)
    return {"sweep": grid_name(args, args.backend), "base": base, "grid": SMOKE_GRID if args.smoke else GRID,
            "constraint": {"perplexity": "<= 1.10 * base"}, "resources": {"cpus": args.trial_cpus}}


def grid_name(args: argparse.Namespace, backend: str) -> str:
    """The sweep's name: a Ray run with other than one CPU per trial is a sweep of its own (``-c<cpus>``)."""
    cpus = f"-c{args.trial_cpus}" if backend == "ray" and args.trial_cpus != 1 else ""
    return f"smollm2-{'smoke' if args.smoke else 'grid'}-w{args.windows}-{backend}{cpus}"


def run(spec_data: dict, results: Path, backend: str = "local", threads: int = 2):
    import torch

    from core import ResultStore, SweepSpec, run_sweep

    torch.set_num_threads(threads)  # protocol cpu-small: 2; a Ray worker sets its own (resources.cpus)
    started = time.perf_counter()

    def show(event) -> None:
        row = event.row
        figure = f"ppl {row.perplexity:.3f}, {row.size_bytes / 1e6:.1f} MB" if row.status == "ok" else row.error
        print(f"  [{event.finished}/{event.planned}] {event.trial.label()}: {figure} ({row.wall_s or 0:.0f} s)",
              flush=True)

    report = run_sweep(SweepSpec.from_dict(spec_data), ResultStore(results), backend=backend, on_trial=show)
    return report, time.perf_counter() - started


def table(report) -> str:
    from core.sweep import short_label, trial_params

    lines = ["| trial | perplexity | size MB | wall s | front | acceptable |", "|---|---|---|---|---|---|"]
    for row in sorted(report.trials, key=lambda r: (r.size_bytes or 0, r.perplexity or 0)):
        ppl = f"{row.perplexity:.3f}" if row.perplexity is not None else row.status
        size = f"{row.size_bytes / 1e6:.1f}" if row.size_bytes is not None else "-"
        lines.append(f"| {short_label(trial_params(row))} | {ppl} | {size} | {row.wall_s or 0:.0f} | "
                     f"{'*' if row.id in report.pareto else ''} | {'yes' if row.id in report.acceptable else ''} |")
    return "\n".join(lines)


def ray_figures(report, results: Path, local_name: str, trial_cpus: int) -> list[str]:
    """Ray's per-trial overhead, and the largest perplexity difference to the local run of the same trial."""
    from core import ResultStore

    rows = [r for r in report.trials if r.status == "ok" and (r.details or {}).get("ray")]
    overhead = [r.details["ray"]["round_trip_s"] - r.wall_s for r in rows]
    lines = [f"Ray per-trial overhead (submit to result less the trial's wall time; a worker's start and its loading "
             f"of the base model included): median "
             f"{statistics.median(overhead):.1f} s, max {max(overhead):.1f} s over {len(rows)} trials"] if rows else []
    local = {r.sweep_params: r.perplexity for r in ResultStore(results).sweep_rows(local_name) if r.status == "ok"}
    shared = [(local[r.sweep_params], r.perplexity) for r in rows if r.sweep_params in local]
    if shared:
        worst = max(abs(a - b) / a for a, b in shared)
        lines.append(f"perplexity vs the local backend: {len(shared)} trials in both, largest relative "
                     f"difference {worst:.2e} (local: 2 torch threads, Ray: {trial_cpus} per trial)")
    return lines


def grid_main(args: argparse.Namespace) -> None:
    spec = grid_spec(args)
    report, wall = run(spec, args.results_dir, args.backend, args.threads)
    print(protocol_line(args.windows) + f"; backend {args.backend}; sweep {spec['sweep']}")
    print(table(report))
    best = report.row(report.best) if report.best else None
    print(f"\nwall time of this run: {wall:.0f} s ({report.run['ran']} trials run, {report.run['skipped']} skipped); "
          f"base perplexity {report.base.perplexity:.3f}")
    print(f"Pareto set: {len(report.pareto)} of {len(report.trials)} trials; smallest acceptable at +10%: "
          + (f"{best.id} ({best.size_bytes / 1e6:.1f} MB, ppl {best.perplexity:.3f})" if best else "none"))
    if args.backend == "ray":
        for line in ray_figures(report, args.results_dir, grid_name(args, "local"), args.trial_cpus):
            print(line)


def sample_base() -> dict:
    return {"model": "sample:teacher", "device": "cpu",
            "steps": [{"prune": {"method": "magnitude", "sparsity": 0.5}},
                      {"quantize": {"method": "rtn", "bits": 4, "group_size": 32}}],
            "evaluation": {"max_windows": None, "latency": False, "compare_to_base": False}}


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives minimised) up to ``reference``."""
    area, ceiling = 0.0, reference[1]
    for x, y in sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1]):
        if y < ceiling:
            area += (reference[0] - x) * (ceiling - y)
            ceiling = y
    return area


def search_main(args: argparse.Namespace) -> None:
    from core.sweep.pareto import pareto_indices

    grid, grid_wall = run({"sweep": "samples-grid", "base": sample_base(), "grid": SAMPLE_SPACE}, args.results_dir,
                          threads=args.threads)
    space = {"steps.0.prune.sparsity": {"float": [0.0, 0.7], "step": 0.1}, "steps.1.quantize.bits": {"int": [2, 8]}}
    search, search_wall = run({"sweep": f"samples-search-{args.sampler}-seed{args.seed}", "base": sample_base(),
                               "search": {"space": space, "trials": args.trials, "sampler": args.sampler,
                                          "seed": args.seed}},
                              args.results_dir, threads=args.threads)
    point = lambda row: (row.size_bytes / 1e6, row.perplexity)  # noqa: E731
    ok_grid = [r for r in grid.trials if r.status == "ok"]
    grid_front = [point(r) for r in ok_grid if r.id in grid.pareto]
    reference = (max(p[0] for p in map(point, ok_grid)) * 1.01, max(p[1] for p in map(point, ok_grid)) * 1.01)
    full = hypervolume(grid_front, reference)
    print(f"protocol samples: sample:teacher, held-out text, every window at seqlen 256; grid {len(ok_grid)} trials "
          f"in {grid_wall:.0f} s; search {args.sampler} {args.trials} trials in {search_wall:.0f} s")
    print("grid front (size MB, perplexity): " + ", ".join(f"({x:.2f}, {y:.3f})" for x, y in sorted(grid_front)))
    print("| trials evaluated | grid-front points reached | hypervolume / grid's |\n|---|---|---|")
    ordered = sorted((r for r in search.trials if r.status == "ok"), key=lambda r: (r.created, r.id))
    for k in range(1, len(ordered) + 1):
        seen = [point(r) for r in ordered[:k]]
        # a grid-front point is reached when a search trial is at least as small and at least as good
        reached = sum(any(x <= gx + 1e-9 and y <= gy + 1e-9 for x, y in seen) for gx, gy in grid_front)
        front = [seen[i] for i in pareto_indices(seen, [True, True])]
        if k % 5 == 0 or k == len(ordered):
            print(f"| {k} | {reached} / {len(grid_front)} | {hypervolume(front, reference) / full:.4f} |")
    first = next((k for k in range(1, len(ordered) + 1) if all(
        any(x <= gx + 1e-9 and y <= gy + 1e-9 for x, y in map(point, ordered[:k])) for gx, gy in grid_front)), None)
    print(f"the whole grid front reached after {first} evaluated trials" if first else
          "the search did not reach the whole grid front")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["grid", "search"])
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--smoke", action="store_true", help="grid: two RTN trials only (checks the script)")
    parser.add_argument("--windows", type=int, default=16, help="grid: evaluation windows (the issue's protocol: 16)")
    parser.add_argument("--trials", type=int, default=30, help="search: the search's budget")
    parser.add_argument("--sampler", choices=["tpe", "nsga2", "random"], default="tpe")
    parser.add_argument("--seed", type=int, default=0, help="search: the sampler's seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the local backend (cpu-small: 2)")
    parser.add_argument("--trial-cpus", type=int, default=1,
                        help="grid, Ray backend: CPUs (and torch threads) per trial; 2 runs one trial at a time with "
                             "the local backend's thread count, so its perplexities can match bit for bit")
    parser.add_argument("--results-dir", type=Path, default=Path(tempfile.gettempdir()) / "squeezelab-sweep-bench")
    args = parser.parse_args()
    (grid_main if args.job == "grid" else search_main)(args)


if __name__ == "__main__":
    main()
