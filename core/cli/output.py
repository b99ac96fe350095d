"""What the command line prints: progress lines on stderr, a result row as text or one JSON object."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable


def progress_printer(enabled: bool) -> Callable[[str, float], None] | None:
    if not enabled:
        return None
    last: dict[str, int] = {}

    def report(stage: str, fraction: float) -> None:
        percent = int(fraction * 100)
        if last.get(stage, -10) + 10 <= percent or fraction >= 1.0 and last.get(stage) != 100:
            last[stage] = percent
            print(f"  {stage}: {percent}%", file=sys.stderr, flush=True)

    return report


def print_row(row, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row.to_dict()))
        return
    details = row.details or {}
    latency = details.get("latency") or {}
    lines = [
        ("model", row.model),
        ("perplexity", f"{row.perplexity:.4f}  ({details.get('windows')} windows x {details.get('seqlen')} tokens, "
                       f"text: {details.get('text')})"),
        ("top-1 accuracy", f"{100 * row.top1_acc:.2f}%"),
        ("parameters", f"{row.params:,} ({row.nonzero_params:,} non-zero)"),
        ("artifact on disk" if details.get("export") else "weights in memory",
         f"{row.size_bytes / 2**20:.2f} MiB ({row.bits_per_weight:.2f} bits/weight)"),
        ("kernel", row.kernel),
    ]
    if row.perplexity is not None and row.base_perplexity is not None and details.get("steps"):
        lines.insert(2, ("base perplexity", f"{row.base_perplexity:.4f}  (same windows)"))
        lines.insert(3, ("steps", details.get("method")))
        if row.top1_agreement is not None:
            agreement = f"top-1 {100 * row.top1_agreement:.2f}%, KL(base||model) {row.kl_to_base:.4f}"
            lines.insert(4, ("agreement with base", agreement))
        lines[4:4] = [("distillation", _distill_summary(step)) for step in details["steps"]
                      if step.get("kind") == "distill"]
    if latency:
        lines += [
            ("prefill", f"{row.prefill_ms:.1f} ms for {latency['prompt_tokens']} tokens (median of {latency['runs']})"),
            ("decode", f"{row.decode_tok_s:.1f} tokens/s over {latency['new_tokens']} tokens, batch 1, KV cache"),
            ("peak memory", f"{row.peak_mem_bytes / 2**20:.0f} MiB"),
        ]
    if details.get("export"):
        lines += _export_lines(details["export"])
    lines += [("device", f"{row.device}, {details.get('dtype')}, {details.get('threads')} threads"),
              ("wall time", f"{row.wall_s:.1f} s"), ("result id", row.id)]
    width = max(len(name) for name, _ in lines)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in lines))


def _export_lines(export: dict) -> list[tuple[str, str]]:
    """The export's path, sizes and check, for the plain-text result."""
    verdict = "passed" if export.get("check_passed") else "FAILED"
    check = (f"{verdict}: perplexity {export['perplexity_before']:.4f} before export, {export['perplexity_after']:.4f} "
             f"after reload ({export['windows']} windows x {export['seqlen']} tokens; tokenizer "
             f"{'identical' if export.get('tokenizer_match') else 'DIFFERENT'})")
    lines = [("export", f"{export['format']} -> {export['path']}"),
             ("weights file(s)", f"{export['weights_bytes'] / 2**20:.2f} MiB (the schemes promise "
                                 f"{export['promised_bytes'] / 2**20:.2f} MiB)"),
             ("reload check", check),
             ("export / reload", f"{export['export_s']:.1f} s / {export['reload_s']:.1f} s")]
    if export.get("zip_path"):
        lines.append(("zip", f"{export['zip_path']} ({export['zip_bytes'] / 2**20:.2f} MiB)"))
    lines += [("export note", note) for note in export.get("notes") or []]
    return lines


def _distill_summary(report: dict) -> str:
    """'200/200 steps (completed), held-out perplexity 91.07 -> 84.20 (best at step 200), 1,400 tokens/s'."""
    best = report.get("best_perplexity")
    best_text = f"{best:.2f} (best at step {report['best_step']})" if best is not None else "n/a"
    return (f"{report['steps_done']}/{report['steps_planned']} steps ({report['stopped']}), held-out perplexity "
            f"{report['initial_perplexity']:.2f} -> {best_text}, {report['tokens_per_s']:,.0f} tokens/s")
