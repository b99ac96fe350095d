"""How a measured figure is said, the same in the CLI and the dashboard: a perplexity with its interval,
a speed with the spread of its runs, a comparison with the base model, and the notes that go with them.

Every function takes a result row's plain fields and its ``details`` dict (as stored), so rows written
before intervals existed read as "no interval" rather than failing.
"""

from __future__ import annotations

import math
from typing import Any

from core.evaluate.intervals import BETTER, WITHIN_NOISE, WORSE


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def plus_minus(perplexity: float, low: float | None, high: float | None, digits: int = 2) -> str:
    """'41.23 ± 1.15' (half the interval's width; the interval itself is asymmetric), or '41.23' without one."""
    if not (_finite(low) and _finite(high)):
        return f"{perplexity:.{digits}f}"
    return f"{perplexity:.{digits}f} ± {(high - low) / 2:.{digits}f}"


def interval_text(low: float | None, high: float | None, details: dict, digits: int = 2) -> str:
    """'95% CI 40.10–42.40, 64 windows x 512 tokens' (or why there is no interval)."""
    windows, seqlen = details.get("windows"), details.get("seqlen")
    protocol = f"{windows} windows x {seqlen} tokens" + (", <bos> first" if details.get("bos_first") else "")
    if _finite(low) and _finite(high):
        return f"95% CI {low:.{digits}f}–{high:.{digits}f}, {protocol}"
    if windows == 1:
        return f"no interval: one window, {protocol}"
    return f"no interval recorded, {protocol}"


def _percent(ratio: float, digits: int = 1) -> str:
    return f"{100 * (ratio - 1):+.{digits}f}%"


def _percent_digits(vs_base: dict) -> int:
    """Decimals that show the paired interval's half-width with two significant digits (1 to 4)."""
    low, high = vs_base.get("ratio_low"), vs_base.get("ratio_high")
    if not (_finite(low) and _finite(high)) or high <= low:
        return 1 if abs(vs_base["ratio"] - 1) >= 0.001 else 3
    half_width_percent = 50 * (high - low)
    return max(1, min(4, 1 - math.floor(math.log10(half_width_percent))))


def vs_base_text(vs_base: dict | None, against: str = "base") -> str | None:
    """The paired comparison as a phrase, e.g. 'within noise: +0.1% perplexity vs base (paired 95% CI -0.3% to
    +0.5%)' or '+3.02% perplexity vs base (paired 95% CI +2.47% to +3.57%): worse'."""
    if not vs_base:
        return None
    digits = _percent_digits(vs_base)
    change = f"{_percent(vs_base['ratio'], digits)} perplexity vs {against}"
    if vs_base.get("ratio_low") is None:
        return f"{change} (no interval: one window, so no verdict)"
    interval = (f"(paired 95% CI {_percent(vs_base['ratio_low'], digits)} to "
                f"{_percent(vs_base['ratio_high'], digits)})")
    if vs_base["verdict"] == WITHIN_NOISE:
        return f"within noise: {change} {interval}"
    return f"{change} {interval}: {vs_base['verdict']}"


def verdict(details: dict) -> str | None:
    """'worse' / 'better' when the paired interval excludes 0, 'within noise' (or 'no interval') when it
    does not, None without a comparison. Only 'worse' and 'better' may be drawn as a loss or a win."""
    vs_base = (details or {}).get("vs_base")
    return vs_base.get("verdict") if vs_base else None


def shows_change(details: dict) -> bool:
    """True when the difference to the base is real (its paired interval excludes 0): draw it with an arrow."""
    return verdict(details) in (WORSE, BETTER)


def spread_text(latency: dict, name: str, digits: int = 1) -> str:
    """'min 15.9, max 16.8, 5 runs' for ``name`` 'decode_tok_s' or 'prefill_ms' (just the runs for old rows)."""
    low, high = latency.get(f"{name}_min"), latency.get(f"{name}_max")
    runs = f"{latency.get('runs')} runs"
    if not (_finite(low) and _finite(high)):
        return runs
    return f"min {low:.{digits}f}, max {high:.{digits}f}, {runs}"


def speed_vs_base_text(latency: dict) -> str | None:
    """'1.15× the base (paired: 5 runs, 1.10–1.20×)', and 'within the runs' spread' when they straddle 1."""
    ratio = (latency or {}).get("vs_base")
    if not ratio:
        return None
    text = (f"{ratio['decode']:.2f}× the base (paired: {ratio['runs']} runs, "
            f"{ratio['decode_min']:.2f}–{ratio['decode_max']:.2f}×)")
    return text + ("; within the runs' spread" if ratio.get("within_spread") else "")


def loop_text(latency: dict) -> str | None:
    """What timed the model: 'prefill: transformers forward; decode: ... (logits equal the forward's to 2.1e-06
    of the largest |logit|; compiled in 41.0 s, once per model, not in the speed)'; None for older rows."""
    loop = (latency or {}).get("loop")
    if not loop or not latency.get("step"):
        return None
    parts = []
    exact = latency.get("exactness") or {}
    if _finite(exact.get("max_logit_diff")):
        parts.append(f"logits equal the forward's to {exact['max_logit_diff']:.1e} of the largest |logit|")
    if _finite(latency.get("compile_s")):
        when = "" if latency.get("compiled_now") else ", earlier in this process"
        parts.append(f"compiled in {latency['compile_s']:.1f} s{when}, once per model, not in the speed")
    return loop + (f" ({'; '.join(parts)})" if parts else "")


def loop_notes(latency: dict) -> list[str]:
    """Why faster decode steps did not run (a family without one, compile off, a step that was not exact)."""
    return list((latency or {}).get("loop_notes") or [])


def notes(details: dict) -> list[str]:
    """What a reader must know about the figures: an implausible perplexity, a rough or missing interval, a busy
    machine while timing."""
    details = details or {}
    found = list((details.get("perplexity_interval") or {}).get("notes") or [])
    busy = (details.get("latency") or {}).get("busy_note")
    return list(details.get("warnings") or []) + found + ([busy] if busy else [])
