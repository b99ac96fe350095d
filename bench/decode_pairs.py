"""Decode speed-ups against fp32 timed alternately in one process, with the perplexity of what was timed.

    python bench/decode_pairs.py                                  # fp32 and every speed job of quant_bench
    python bench/decode_pairs.py --jobs int8-dynamic --rounds 5 --windows 64
    python bench/decode_pairs.py --jobs mlp-25-act layers-25      # structured jobs of prune_bench

On a small shared machine the speed of one process drifts by 10-20% from minute to minute, and
a batch-1 int8 decode (hundreds of short kernel calls per token) drifts more than fp32 (a few
long, bandwidth-bound ones). Timing each job in its own process minutes apart (what
``bench/quant_bench.py`` does) therefore mixes machine drift into "x fp32". Here every model is
built the way a recipe builds it (each step's ``apply``, with the recipe's calibration), scored on the
evaluation windows, and then all of them are timed in turns, round after round, so each round's
ratio compares runs taken seconds apart. Each timing is ``core.evaluate.measure_latency`` (batch 1,
128-token prompt, 64 new tokens, a warm-up, the median of 5 runs, 2 threads); the table gives the
median over rounds and the range of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import prune_bench, quant_bench  # noqa: E402
from bench.common import protocol_line  # noqa: E402

# job name -> its bench's recipe builder: quantization speed jobs and the structured pruning jobs
RECIPE_OF = {**{name: quant_bench.recipe_of for name in quant_bench.SPEED_JOBS},
             **{name: prune_bench.recipe_of for name in prune_bench.STRUCTURED_JOBS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="*", default=[j for j in quant_bench.SPEED_JOBS if j != "fp32"],
                        help="speed jobs of bench/quant_bench.py or structured jobs of bench/prune_bench.py "
                             "to time against fp32")
    parser.add_argument("--rounds", type=int, default=5, help="turns of timing every model")
    parser.add_argument("--windows", type=int, default=64, help="evaluation windows (protocol: 64)")
    args = parser.parse_args()
    unknown = sorted(set(args.jobs) - set(RECIPE_OF))
    if unknown:
        raise SystemExit(f"unknown job(s) {', '.join(unknown)}; choose from {', '.join(RECIPE_OF)}")

    import torch

    from bench.eval_vs_plain import smollm2_gguf
    from core import evaluate, models
    from core.evaluate import measurement as evaluation
    from core.recipe import Recipe, pipeline

    torch.set_num_threads(2)
    model_dir = str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    jobs = ["fp32", *[j for j in args.jobs if j != "fp32"]]
    recipes = {name: Recipe.from_dict(RECIPE_OF[name](name, model_dir, args.windows)) for name in jobs}
    loaded = models.load(model_dir, device="cpu", dtype=recipes["fp32"].dtype)
    built, perplexity, kernels = {}, {}, {}
    for name, recipe in recipes.items():
        model = models.clone(loaded.model) if recipe.steps else loaded.model
        context = pipeline.step_context(recipe, loaded, None, None)
        for step in recipe.steps:
            step.parsed.apply(model, context)
        ids, windows = evaluation.eval_windows(loaded, recipe.evaluation)
        perplexity[name] = evaluate.evaluate_quality(model, windows).perplexity
        kernels[name] = evaluation.kernel_label(model, evaluate.measure_size(model))
        built[name] = model
        print(f"{name}: perplexity {perplexity[name]:.2f}", file=sys.stderr, flush=True)
    spec = recipes["fp32"].evaluation
    prompt = ids[:spec.prompt_tokens]
    speeds: dict[str, list[float]] = {name: [] for name in jobs}
    prefills: dict[str, list[float]] = {name: [] for name in jobs}
    loops: dict[str, str] = {}
    for round_index in range(args.rounds):
        for name in jobs:
            latency = evaluate.measure_latency(built[name], prompt, spec.new_tokens, runs=spec.latency_runs)
            speeds[name].append(latency.decode_tok_s)
            prefills[name].append(latency.prefill_ms)
            loops[name] = latency.loop
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {speeds[n][-1]:.1f}" for n in jobs),
              file=sys.stderr, flush=True)
    print(protocol_line(args.windows))
    print(f"decode: batch 1, {prompt.numel()}-token prompt, {spec.new_tokens} new tokens, median of "
          f"{spec.latency_runs} runs per timing; {args.rounds} rounds, every model timed in turn each round; "
          f"loops: {'; '.join(f'{n}: {loop}' for n, loop in loops.items())}")
    print("| job | perplexity | vs fp32 perplexity | prefill ms (median) | decode tok/s (median of rounds) | "
          "x fp32 (median of per-round ratios) | per-round ratios, min-max | kernel |")
    print("|---|---|---|---|---|---|---|---|")
    for name in jobs:
        ratios = [s / b for s, b in zip(speeds[name], speeds["fp32"], strict=True)]
        change = 100 * (perplexity[name] / perplexity["fp32"] - 1)
        print(f"| {name} | {perplexity[name]:.2f} | {change:+.1f}% | {statistics.median(prefills[name]):.0f} | "
              f"{statistics.median(speeds[name]):.1f} | {statistics.median(ratios):.2f} | "
              f"{min(ratios):.2f}-{max(ratios):.2f} | {kernels[name]} |")


if __name__ == "__main__":
    main()
