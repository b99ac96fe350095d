"""What the command line prints: progress lines on stderr, a result row as text or one JSON object."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from core.evaluate import report

PPL_DIGITS = 3  # perplexity decimals in the text output (the row and --json keep full precision)


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
    """The result row: one JSON object (``--json``, the row's fields), or aligned text lines."""
    if as_json:
        print(json.dumps(row.to_dict()))
        return
    details = row.details or {}
    lines = [("model", row.model), *_quality_lines(row, details)]
    lines += [
        ("top-1 accuracy", f"{100 * row.top1_acc:.2f}%"),
        ("parameters", f"{row.params:,} ({row.nonzero_params:,} non-zero)"),
        ("artifact on disk" if details.get("export") else "weights in memory",
         f"{row.size_bytes / 2**20:.2f} MiB ({row.bits_per_weight:.2f} bits/weight)"),
        ("kernel", row.kernel),
    ]
    lines += _latency_lines(row, details.get("latency") or {})
    if details.get("export"):
        lines += _export_lines(details["export"])
    lines += [("note", note) for note in report.notes(details)]
    lines += [("device", f"{row.device}, {details.get('dtype')}, {details.get('threads')} threads"),
              ("wall time", f"{row.wall_s:.1f} s"), ("result id", row.id)]
    width = max(len(name) for name, _ in lines)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in lines))


def _quality_lines(row, details: dict) -> list[tuple[str, str]]:
    """Perplexity with its interval; after steps, the base's on the same windows and the paired verdict."""
    ppl = report.plus_minus(row.perplexity, row.perplexity_ci_low, row.perplexity_ci_high, PPL_DIGITS)
    interval = report.interval_text(row.perplexity_ci_low, row.perplexity_ci_high, details, PPL_DIGITS)
    lines = [("perplexity", f"{ppl}  ({interval}, text: {details.get('text')})")]
    if row.perplexity is None or row.base_perplexity is None or not details.get("steps"):
        return lines
    base = details.get("base_perplexity_interval") or {}
    base_ppl = report.plus_minus(row.base_perplexity, base.get("low"), base.get("high"), PPL_DIGITS)
    base_interval = report.interval_text(base.get("low"), base.get("high"), details, PPL_DIGITS)
    lines.append(("base perplexity", f"{base_ppl}  ({base_interval}, same windows)"))
    compared = report.vs_base_text(details.get("vs_base"))
    if compared:
        lines.append(("vs base", compared))
    lines.append(("steps", details.get("method")))
    if row.top1_agreement is not None:
        lines.append(("agreement with base", f"top-1 {100 * row.top1_agreement:.2f}%, "
                                             f"KL(base||model) {row.kl_to_base:.4f}"))
    lines += [("distillation", _distill_summary(step)) for step in details["steps"] if step.get("kind") == "distill"]
    return lines


def _latency_lines(row, latency: dict) -> list[tuple[str, str]]:
    """Prefill and decode (medians, with the spread of the runs), the paired speed against the base, memory."""
    if not latency:
        return []
    lines = [
        ("prefill", f"{row.prefill_ms:.1f} ms for {latency['prompt_tokens']} tokens "
                    f"(median; {report.spread_text(latency, 'prefill_ms')})"),
        ("decode", f"{row.decode_tok_s:.1f} tokens/s over {latency['new_tokens']} tokens, batch 1, KV cache "
                   f"(median; {report.spread_text(latency, 'decode_tok_s')})"),
    ]
    compared, base = report.speed_vs_base_text(latency), latency.get("base")
    if compared and base:
        lines.append(("speed vs base", f"decode {compared}; prefill {latency['vs_base']['prefill']:.2f}×"))
        lines.append(("base speed", f"decode {base['decode_tok_s']:.1f} tokens/s "
                                    f"({report.spread_text(base, 'decode_tok_s')}), prefill {base['prefill_ms']:.1f} ms"
                                    " (timed in turns with the model)"))
    lines.append(("peak memory", f"{row.peak_mem_bytes / 2**20:.0f} MiB"))
    loop = report.loop_text(latency)
    if loop:
        lines.append(("decode loop", loop))
    return lines + [("loop note", note) for note in report.loop_notes(latency)]


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
