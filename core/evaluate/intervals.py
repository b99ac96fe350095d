"""95% intervals from per-window losses: a perplexity's, and the paired one of its difference to a base model.

The evaluation windows are the independent units (tokens inside a window share their context, so
they are not). Window ``i`` has ``s_i``, the sum of its tokens' NLL, over ``n_i`` predicted tokens; the
mean NLL per token is ``m = sum(s_i) / sum(n_i)`` and perplexity is ``exp(m)``, as the papers define it.

**Method: Student-t over windows.** The standard error of ``m`` (a ratio of sums over windows; the
linearized, cluster-robust form) is

    se^2 = k / (k - 1) * sum_i (s_i - m * n_i)^2 / (sum_i n_i)^2          (k windows)

which, when every window scores the same number of tokens (always so with fixed-length windows), is
the textbook ``sd / sqrt(k)`` of the k per-window mean NLLs: a token-weighted Student-t interval on them.
The interval of the mean NLL is ``m ± t(0.975, k - 1) * se``, and the perplexity's is ``exp`` of its
ends: asymmetric, with ``exp(m)`` always inside. A bootstrap over windows was not chosen: it is random
(its ends move with the seed), and with few windows its percentile interval is too narrow (it has no
t correction); a window's mean of hundreds of token losses is close to normal, where t is exact.

**Paired.** A model and its base scored on the same windows: ``d_i = s_i - s_i^base`` over the same
``n_i`` gives the interval of the mean NLL difference, and ``exp`` of it the interval of the perplexity
ratio. Windows that are hard for one model are hard for the other, so this is much tighter than two
overlapping intervals. A difference whose interval contains 0 is *within noise*.

One window gives no interval (``None``, with a note), never a made-up one. Pure math: no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

LEVEL = 0.95
METHOD = "Student-t over windows (token-weighted), exp of the mean-NLL interval"
ROUGH_BELOW_TOKENS = 10_000  # fewer scored tokens than this: the interval itself is rough
WITHIN_NOISE, WORSE, BETTER, NO_INTERVAL = "within noise", "worse", "better", "no interval"


def t_two_sided_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (a whole number >= 1) degrees of freedom.

    Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df): exact finite sums in theta = atan(t / sqrt(df)).
    """
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sin(theta) * (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ... up to cos^(df-2))
        term = total = 1.0
        for power in range(2, df - 1, 2):
            term *= cos2 * (power - 1) / power
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)  # cos + 2/3 cos^3 + 2*4/(3*5) cos^5 + ... up to cos^(df-2)
    for power in range(3, df - 1, 2):
        term *= cos2 * (power - 1) / power
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * total)


def t_quantile(level: float, df: int) -> float:
    """The ``t`` with P(|T| <= t) = ``level`` (e.g. 12.706 for 0.95 and df 1; 1.96 as df grows)."""
    if not 0 < level < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0 < level < 1 and df >= 1, got level={level}, df={df}")
    low, high = 0.0, 2.0
    while t_two_sided_mass(high, df) < level:
        low, high = high, 2 * high
    for _ in range(200):  # bisection: the mass rises monotonically in t
        middle = (low + high) / 2
        if t_two_sided_mass(middle, df) < level:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return (low + high) / 2


@dataclass(frozen=True)
class MeanInterval:
    """The interval of a per-token mean over windows: ``mean ± half_width`` (None: one window)."""

    mean: float
    half_width: float | None
    windows: int
    tokens: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width


def mean_interval(sums: Sequence[float], counts: Sequence[int], level: float = LEVEL) -> MeanInterval:
    """Interval of ``sum(sums) / sum(counts)`` with windows as the units (see the module docstring)."""
    if len(sums) != len(counts) or not sums:
        raise ValueError(f"one sum and one token count per window, got {len(sums)} sums and {len(counts)} counts")
    windows, tokens = len(sums), int(sum(counts))
    if tokens <= 0:
        raise ValueError("the windows scored no tokens")
    mean = math.fsum(sums) / tokens
    if windows == 1:
        return MeanInterval(mean, None, 1, tokens)
    spread = math.fsum((s - mean * n) ** 2 for s, n in zip(sums, counts, strict=True))
    standard_error = math.sqrt(windows / (windows - 1) * spread) / tokens
    return MeanInterval(mean, t_quantile(level, windows - 1) * standard_error, windows, tokens)


def interval_notes(windows: int, tokens: int) -> list[str]:
    """What a reader must know before trusting an interval: one window gives none; few tokens a rough one."""
    if windows == 1:
        return ["one window: no interval (score 2 or more windows for one)"]
    if tokens < ROUGH_BELOW_TOKENS:
        return [f"only {tokens:,} tokens scored: the interval is rough ({ROUGH_BELOW_TOKENS:,} or more give a "
                "steadier figure)"]
    return []


@dataclass(frozen=True)
class PerplexityInterval:
    """``exp(mean NLL)`` and its 95% interval over windows; ``low`` / ``high`` are None for one window."""

    perplexity: float
    low: float | None
    high: float | None
    windows: int
    tokens: int
    level: float = LEVEL
    method: str = METHOD

    @property
    def notes(self) -> list[str]:
        return interval_notes(self.windows, self.tokens)

    def as_dict(self) -> dict:
        return {**asdict(self), "notes": self.notes}


def perplexity_interval(nll_sums: Sequence[float], counts: Sequence[int], level: float = LEVEL) -> PerplexityInterval:
    """The perplexity of windows with summed NLLs ``nll_sums`` over ``counts`` tokens, with its interval."""
    nll = mean_interval(nll_sums, counts, level)
    low = None if nll.low is None else math.exp(nll.low)
    high = None if nll.high is None else math.exp(nll.high)
    return PerplexityInterval(math.exp(nll.mean), low, high, nll.windows, nll.tokens, level)


@dataclass(frozen=True)
class PairedComparison:
    """A model against its base on the same windows: the perplexity ratio and the paired interval.

    ``ratio`` = perplexity / base perplexity = exp(mean NLL difference); ``verdict`` is "within noise"
    when the difference's interval contains 0, "worse" / "better" when it lies above / below 0, and
    "no interval" for one window.
    """

    ratio: float
    ratio_low: float | None
    ratio_high: float | None
    nll_diff: float
    nll_diff_low: float | None
    nll_diff_high: float | None
    verdict: str
    windows: int
    tokens: int
    level: float = LEVEL

    @property
    def within_noise(self) -> bool:
        """True unless the interval shows a real difference (one window: no interval, so no claim either)."""
        return self.verdict not in (WORSE, BETTER)

    def as_dict(self) -> dict:
        return {**asdict(self), "paired": True}


def paired_comparison(nll_sums: Sequence[float], base_nll_sums: Sequence[float], counts: Sequence[int],
                      level: float = LEVEL) -> PairedComparison:
    """Compare per-window NLL sums of a model and its base over the same windows (``counts`` tokens each)."""
    if len(nll_sums) != len(base_nll_sums):
        raise ValueError(f"paired windows differ in number: {len(nll_sums)} and {len(base_nll_sums)}")
    diff = mean_interval([s - b for s, b in zip(nll_sums, base_nll_sums, strict=True)], counts, level)
    if diff.half_width is None:
        verdict = NO_INTERVAL
    elif diff.low > 0:
        verdict = WORSE
    elif diff.high < 0:
        verdict = BETTER
    else:
        verdict = WITHIN_NOISE
    low, high = diff.low, diff.high
    return PairedComparison(
        ratio=math.exp(diff.mean), ratio_low=None if low is None else math.exp(low),
        ratio_high=None if high is None else math.exp(high), nll_diff=diff.mean, nll_diff_low=low,
        nll_diff_high=high, verdict=verdict, windows=diff.windows, tokens=diff.tokens, level=level)
