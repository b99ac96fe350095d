"""Knowledge distillation: KD against plain next-token training, recovery of a compressed model, and a
layer-dropped SmolLM2-135M. Prints one markdown table per part (1 thread by default; run under nice).

    python bench/distill_bench.py --part samples    # sample student: KD at T = 1, 2, 4, 8 vs CE alone
    python bench/distill_bench.py --part recovery   # sample teacher: dense, 50% magnitude / 3-bit RTN g64, + KD
    python bench/distill_bench.py --part smollm2    # SmolLM2-135M, half its blocks, 200 KD steps of 2 x 128

samples / recovery: protocol samples (evaluation on every held-out window of 256 tokens), training on
the samples' training text, seed 0. Recovery holds the compression while training: pruned zeros stay
zero; quantized weights train as fp32 latent weights seen through their fixed 3-bit grid with
straight-through gradients and are re-packed (QuantLinear) at the end (``core.distill.qat``).
smollm2: protocol cpu-small (training on WikiText-2 valid tokens, evaluation on WikiText-2 raw test,
seqlen 512, the first 64 windows unless ``--windows`` says fewer). Every run starts from the same
weights, draws the same batches (seed 0) and ends with its last weights (``keep_best: false``), so
the runs of a table differ only in their loss.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
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
from core.quantize import QuantizeSpec, quantize_  # noqa: E402
from core.quantize.qlinear import QuantLinear  # noqa: E402


def perplexity(model: torch.nn.Module, windows: torch.Tensor) -> float:
    return evaluate.evaluate_quality(model, windows).perplexity


def median_tokens_per_s(report: dict) -> float:
    """Median over steps: robust to a step that another process's burst (or a pause) stretched."""
    return statistics.median(r["tokens_per_s"] for r in report["curve"] if r["tokens_per_s"])


def header(args: argparse.Namespace, extra: str) -> str:
    return (f"device cpu ({platform.machine()}), {torch.get_num_threads()} thread(s), fp32, torch {torch.__version__}, "
            f"seed 0; {extra}")


def cpu_seconds() -> float:
    """CPU time of this process: unlike wall time, not stretched by other processes or by pauses."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train(student: torch.nn.Module, teacher: torch.nn.Module, spec: DistillSpec, tokenizer,
          default_text: str) -> dict:
    """distill_'s report, plus ``cpu_s``: the CPU seconds of the run (training and its held-out checks)."""
    train_ids, held = training_data(tokenizer, spec, spec.seqlen, default_text)
    started = cpu_seconds()
    report = distill_(student, teacher, spec, train_ids, held, bos=data.added_bos(tokenizer)).as_dict()
    return {**report, "cpu_s": cpu_seconds() - started}


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
    """The sample teacher compressed (50% magnitude; 3-bit RTN), then trained with KD (teacher: the dense
    model) or with CE alone, the compression held: zeros fixed, or quantized weights trained through
    their fixed grid with straight-through gradients and re-packed at the end (``core.distill.qat``).
    A control row trains the dense model itself with the same recipe, to show what the training alone
    does to an uncompressed model."""
    teacher = models.load("sample:teacher", device="cpu")
    windows = data.windows(data.tokenize(teacher.tokenizer, data.sample_heldout_text()), 256)
    quant = QuantizeSpec(method="rtn", bits=3, group_size=args.group_size)
    scheme = f"3-bit RTN {'g' + str(args.group_size) if args.group_size else 'per channel'} symmetric"
    common = {"student": "self", "steps": args.steps, "lr": args.lr, "batch_size": 8, "seqlen": 256,
              "eval_every": 0, "eval_windows": 4, "keep_best": False, "text": "sample-train", "seed": 0,
              "temperature": args.temperature}
    kd_name = f"KD (T={args.temperature:g}, alpha={args.alpha:g})"
    dense = perplexity(teacher.model, windows)
    rows: list[tuple[str, float, float | None, dict | None]] = [("dense teacher", dense, None, None)]

    def trained(name: str, model: torch.nn.Module, alpha: float, reference: float | None) -> None:
        spec = DistillSpec(alpha=alpha, **common)  # hold_zeros left to its default: yes for student self
        report = train(model, teacher.model, spec, teacher.tokenizer, "sample-train")
        rows.append((name, perplexity(model, windows), reference, report))
        print(f"{name}: {rows[-1][1]:.2f} ({report['wall_s']:.0f} s)", flush=True)

    if "control" in args.runs:
        trained(f"dense teacher + {args.steps} steps of the same {kd_name} (control)", models.clone(teacher.model),
                args.alpha, None)
    if "magnitude" in args.runs:
        pruned = models.clone(teacher.model)
        prune_(pruned, PruneSpec(method="magnitude", sparsity=0.5))
        lost = perplexity(pruned, windows)
        rows.append(("magnitude 50% (per matrix)", lost, lost, None))
        trained(f"+ {args.steps} steps {kd_name}, zeros held", models.clone(pruned), args.alpha, lost)
        trained(f"+ {args.steps} steps CE alone (alpha=0), zeros held", models.clone(pruned), 0.0, lost)
    if "rtn" in args.runs:
        packed = models.clone(teacher.model)
        quantize_(packed, quant)
        lost = perplexity(packed, windows)
        rows.append((scheme, lost, lost, None))
        for name, alpha in ((kd_name, args.alpha), ("CE alone (alpha=0)", 0.0)):
            model = models.clone(packed)  # distill_ trains it through its grid and re-packs it
            trained(f"+ {args.steps} steps {name}, through the grid, re-packed", model, alpha, lost)
            assert any(isinstance(m, QuantLinear) for m in model.modules()), "the student did not end packed"
    print(header(args, f"{args.steps} steps x 8 x 256 tokens of sample-train, AdamW peak lr {args.lr:g}, warm-up "
                       f"{args.steps // 10}, cosine to 10%, clip 1.0; teacher: the dense model; evaluation: all "
                       f"{windows.shape[0]} held-out windows x 256; quantization: {scheme}, block linears "
                       f"(embeddings / tied lm_head stay fp32)"))
    print("| model | held-out perplexity | vs dense | fraction of lost perplexity won back | train wall s | "
          "train CPU s |")
    print("|---|---|---|---|---|---|")
    for name, ppl, reference, report in rows:
        won = f"{(reference - ppl) / (reference - dense):.0%}" if report and reference is not None else "-"
        wall = f"{report['wall_s']:.0f}" if report else "-"
        cpu = f"{report['cpu_s']:.0f}" if report else "-"
        vs = f"{ppl - dense:+.2f}" if name != "dense teacher" else "-"
        print(f"| {name} | {ppl:.2f} | {vs} | {won} | {wall} | {cpu} |")


def smollm2_part(args: argparse.Namespace) -> None:
    """SmolLM2-135M with half its blocks dropped, before and after KD steps on WikiText-2 valid."""
    from bench.eval_vs_plain import smollm2_gguf

    teacher = models.load(smollm2_gguf(), device="cpu")
    shared = data.shared_data_dir()
    if shared is None:
        raise SystemExit("needs ../shared/data (WikiText-2) or SQUEEZELAB_DATA_DIR")
    windows = data.windows(data.tokenize(teacher.tokenizer, data.wikitext2_test_text()), 512, args.windows)
    total = len(decoder_blocks(teacher.model)[1])
    keep = evenly_spaced_layers(total, total // 2)
    spec = DistillSpec(student="layer_drop", keep_layers=list(keep), temperature=2.0, alpha=0.5, steps=args.steps,
                       lr=args.lr, batch_size=args.batch_size, seqlen=args.seqlen, eval_every=50, eval_windows=4,
                       keep_best=False,
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
    print(header(args, f"protocol cpu-small; student: {description}; {args.steps} steps x {args.batch_size} x "
                       f"{args.seqlen} tokens of WikiText-2 valid, T=2, alpha=0.5, AdamW peak lr {args.lr:g}, warm-up "
                       f"{spec.warmup_steps}, cosine to 10%, clip 1.0; evaluation WikiText-2 raw test, seqlen 512, "
                       f"first {windows.shape[0]} windows"))
    print("| model | params | WikiText-2 perplexity | train wall s | train CPU s | tokens/s (median step; teacher + "
          "student) | tokens per CPU s |")
    print("|---|---|---|---|---|---|---|")
    if dense is not None:
        print(f"| SmolLM2-135M (teacher) | {report['teacher_params']:,} | {dense:.2f} | - | - | - | - |")
    print(f"| student before KD | {report['student_params']:,} | {before:.2f} | - | - | - | - |")
    print(f"| student after {report['steps_done']} KD steps | {report['student_params']:,} | {after:.2f} | "
          f"{report['wall_s']:.0f} | {report['cpu_s']:.0f} | {median_tokens_per_s(report):,.1f} | "
          f"{report['train_tokens'] / report['cpu_s']:,.1f} |")
    curve = [(r["step"], round(r["eval_perplexity"], 2)) for r in report["curve"] if r["eval_perplexity"]]
    print(f"held-out (last 4 x {args.seqlen} tokens of WikiText-2 valid) perplexity by step: {curve}")
    print(f"whole run {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["samples", "recovery", "smollm2"], required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None, help="default: 200")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-3 (samples), 3e-4 (recovery, smollm2)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--dense", action="store_true", help="smollm2: also evaluate the teacher")
    parser.add_argument("--windows", type=int, default=64, help="smollm2: first N evaluation windows of 512 tokens")
    parser.add_argument("--batch-size", type=int, default=2, help="smollm2: windows per step")
    parser.add_argument("--seqlen", type=int, default=128, help="smollm2: tokens per training window")
    parser.add_argument("--alpha", type=float, default=0.5, help="recovery: weight of the KD term")
    parser.add_argument("--temperature", type=float, default=2.0, help="recovery: KD temperature")
    parser.add_argument("--group-size", type=int, default=64, help="recovery: 3-bit RTN group size (0: per channel)")
    parser.add_argument("--runs", nargs="+", default=["control", "magnitude", "rtn"],
                        choices=["control", "magnitude", "rtn"], help="recovery: which rows to train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.steps = args.steps or 200
    args.lr = args.lr or (1e-3 if args.part == "samples" else 3e-4)
    args.group_size = args.group_size or None
    {"samples": samples_part, "recovery": recovery_part, "smollm2": smollm2_part}[args.part](args)


if __name__ == "__main__":
    main()
