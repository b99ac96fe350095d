"""Knowledge distillation: KD against plain next-token training, recovery of a pruned model, and a
layer-dropped SmolLM2-135M. Prints one markdown table per part.

    python bench/distill_bench.py --part samples            # sample student: KD at T = 1, 2, 4, 8 vs CE alone
    python bench/distill_bench.py --part recovery           # sample teacher: dense, 50% magnitude, + KD recovery
    python bench/distill_bench.py --part smollm2 --threads 2  # SmolLM2-135M, half its blocks, 200 KD steps

samples / recovery: protocol samples (evaluation on every held-out window of 256 tokens), training on
the samples' training text, seed 0. smollm2: protocol cpu-small (training on WikiText-2 valid tokens,
evaluation on WikiText-2 raw test, seqlen 512, first 64 windows). Every run starts from the same
weights, draws the same batches (seed 0) and ends with its last weights (``keep_best: false``), so
the runs of a table differ only in their loss.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import data, evaluate, models  # noqa: E402
from core.distill import DistillSpec, build_student_, distill_, evenly_spaced_layers, training_data  # noqa: E402
from core.layers import decoder_blocks  # noqa: E402
from core.prune import PruneSpec, prune_  # noqa: E402


def perplexity(model: torch.nn.Module, windows: torch.Tensor) -> float:
    return evaluate.evaluate_quality(model, windows).perplexity


def median_tokens_per_s(report: dict) -> float:
    """Median over steps: robust to a step that another process's burst (or a pause) stretched."""
    return statistics.median(r["tokens_per_s"] for r in report["curve"] if r["tokens_per_s"])


def header(args: argparse.Namespace, extra: str) -> str:
    return (f"device cpu ({platform.machine()}), {torch.get_num_threads()} thread(s), fp32, torch {torch.__version__}, "
            f"seed 0; {extra}")


def train(student: torch.nn.Module, teacher: torch.nn.Module, spec: DistillSpec, tokenizer,
          default_text: str) -> dict:
    train_ids, held = training_data(tokenizer, spec, spec.seqlen, default_text)
    return distill_(student, teacher, spec, train_ids, held).as_dict()


def samples_part(args: argparse.Namespace) -> None:
    """The bundled student (trained weights) trained on, with KD at several T and with CE alone."""
    teacher, student = models.load("sample:teacher", device="cpu"), models.load("sample:student", device="cpu")
    windows = data.windows(data.tokenize(teacher.tokenizer, data.sample_heldout_text()), 256)
    common = {"student": "self", "steps": args.steps, "lr": args.lr, "batch_size": 8, "seqlen": 256,
              "eval_every": 0, "eval_windows": 4, "keep_best": False, "text": "sample-train", "seed": 0}
    rows = [("student as bundled", "-", "-", perplexity(student.model, windows), None)]
    rows.append(("teacher", "-", "-", perplexity(teacher.model, windows), None))
    for name, temperature, alpha in [("CE alone", 1.0, 0.0)] + [(f"KD T={t:g}", t, 0.5) for t in args.temperatures]:
        model = models.clone(student.model)
        spec = DistillSpec(temperature=temperature, alpha=alpha, **common)
        report = train(model, teacher.model, spec, student.tokenizer, "sample-train")
        rows.append((name, f"{temperature:g}", f"{alpha:g}", perplexity(model, windows), report))
        print(f"{name}: {rows[-1][3]:.2f} ({report['wall_s']:.0f} s)", flush=True)
    print(header(args, f"{args.steps} steps x 8 x 256 tokens of sample-train, AdamW peak lr {args.lr:g}, warm-up "
                       f"{args.steps // 10}, cosine to 10%, clip 1.0; student starts from its bundled weights; "
                       f"evaluation: all {windows.shape[0]} held-out windows x 256"))
    print("| student trained with | T | alpha | held-out perplexity | train wall s | tokens/s (median step) |")
    print("|---|---|---|---|---|---|")
    for name, t, a, ppl, report in rows:
        wall = f"{report['wall_s']:.0f}" if report else "-"
        speed = f"{median_tokens_per_s(report):,.0f}" if report else "-"
        print(f"| {name} | {t} | {a} | {ppl:.2f} | {wall} | {speed} |")


def recovery_part(args: argparse.Namespace) -> None:
    """The sample teacher pruned to 50% by magnitude, then trained with its zeros held: KD and CE."""
    teacher = models.load("sample:teacher", device="cpu")
    windows = data.windows(data.tokenize(teacher.tokenizer, data.sample_heldout_text()), 256)
    dense = perplexity(teacher.model, windows)
    pruned = models.clone(teacher.model)
    prune_(pruned, PruneSpec(method="magnitude", sparsity=0.5))
    lost = perplexity(pruned, windows)
    rows = [("dense teacher", dense, None), ("magnitude 50% (per matrix)", lost, None)]
    common = {"student": "self", "steps": args.steps, "lr": args.lr, "batch_size": 8, "seqlen": 256,
              "eval_every": 0, "eval_windows": 4, "keep_best": False, "text": "sample-train", "seed": 0}
    for name, alpha in ((f"+ {args.steps} KD steps (T=2, alpha=0.5), zeros held", 0.5),
                        (f"+ {args.steps} CE steps (alpha=0), zeros held", 0.0)):
        model = models.clone(pruned)
        report = train(model, teacher.model, DistillSpec(temperature=2.0, alpha=alpha, **common), teacher.tokenizer,
                       "sample-train")
        rows.append((name, perplexity(model, windows), report))
        print(f"{name}: {rows[-1][1]:.2f} ({report['wall_s']:.0f} s)", flush=True)
    print(header(args, f"{args.steps} steps x 8 x 256 tokens of sample-train, AdamW peak lr {args.lr:g}, cosine; "
                       f"evaluation: all {windows.shape[0]} held-out windows x 256"))
    print("| model | held-out perplexity | share of the loss won back | train wall s |")
    print("|---|---|---|---|")
    for name, ppl, report in rows:
        won = f"{(lost - ppl) / (lost - dense):.0%}" if report else "-"
        wall = f"{report['wall_s']:.0f}" if report else "-"
        print(f"| {name} | {ppl:.2f} | {won} | {wall} |")
    print("| 3-bit RTN + KD | measured in the quantization section | | |")


def smollm2_part(args: argparse.Namespace) -> None:
    """SmolLM2-135M with half its blocks dropped, before and after KD steps on WikiText-2 valid."""
    from bench.eval_vs_plain import smollm2_gguf

    teacher = models.load(smollm2_gguf(), device="cpu")
    shared = data.shared_data_dir()
    if shared is None:
        raise SystemExit("needs ../shared/data (WikiText-2) or SQUEEZELAB_DATA_DIR")
    windows = data.windows(data.tokenize(teacher.tokenizer, data.wikitext2_test_text()), 512, 64)
    total = len(decoder_blocks(teacher.model)[1])
    keep = evenly_spaced_layers(total, total // 2)
    spec = DistillSpec(student="layer_drop", keep_layers=list(keep), temperature=2.0, alpha=0.5, steps=args.steps,
                       lr=args.lr, batch_size=4, seqlen=256, eval_every=50, eval_windows=4, keep_best=False,
                       text=str(shared / "wikitext-2-tokens" / "wiki.valid.tokens"), seed=0)
    started = time.perf_counter()
    dense = perplexity(teacher.model, windows) if args.dense else None
    student, description = build_student_(models.clone(teacher.model), spec)
    before = perplexity(student, windows)
    print(f"before: {before:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)
    report = train(student, teacher.model, spec, teacher.tokenizer, "wikitext2-valid")
    after = perplexity(student, windows)
    saved = Path(tempfile.gettempdir()) / "squeezelab-distill-smollm2.json"
    saved.write_text(json.dumps({"dense": dense, "before": before, "after": after, "report": report}))
    print(header(args, f"protocol cpu-small; student: {description}; {args.steps} steps x 4 x 256 tokens of "
                       f"WikiText-2 valid, T=2, alpha=0.5, AdamW peak lr {args.lr:g}, warm-up {spec.warmup_steps}, "
                       f"cosine; evaluation WikiText-2 test, seqlen 512, first 64 windows"))
    print("| model | params | WikiText-2 perplexity | train wall s | tokens/s (median step; teacher + student) |")
    print("|---|---|---|---|---|")
    if dense is not None:
        print(f"| SmolLM2-135M (teacher) | {report['teacher_params']:,} | {dense:.2f} | - | - |")
    print(f"| student before KD | {report['student_params']:,} | {before:.2f} | - | - |")
    print(f"| student after {report['steps_done']} KD steps | {report['student_params']:,} | {after:.2f} | "
          f"{report['wall_s']:.0f} | {median_tokens_per_s(report):,.0f} |")
    curve = [(r["step"], round(r["eval_perplexity"], 2)) for r in report["curve"] if r["eval_perplexity"]]
    print(f"held-out (last 4 x 256 tokens of WikiText-2 valid) perplexity by step: {curve}")
    print(f"whole run {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["samples", "recovery", "smollm2"], required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="default: 200")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 (samples), 3e-4 (recovery, smollm2)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--dense", action="store_true", help="smollm2: also evaluate the teacher")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = args.steps or 200
    args.lr = args.lr or (1e-3 if args.part == "samples" else 3e-4)
    {"samples": samples_part, "recovery": recovery_part, "smollm2": smollm2_part}[args.part](args)


if __name__ == "__main__":
    main()
