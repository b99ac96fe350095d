"""Constraints: which trials count as acceptable, e.g. ``perplexity: "<= 1.10 * base"``.

An expression is a comparison and a bound that is linear in the base model's value of the same
metric, read by a small tokenizer and grammar (never ``eval``)::

    constraint := op bound
    op         := "<=" | "<" | ">=" | ">"
    bound      := term (("+" | "-") term)*
    term       := number | "base" | number "*" base | "base" "*" number | number "%" "*"? base

So ``"<= 1.10 * base"``, ``"<= base + 2.5"``, ``"< 110% base"``, ``"<= 5e6"`` (no base: a fixed bound) and
``">= 0.9 * base"`` all parse; anything else is refused with the grammar and an example.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from core.checks import require

OPERATORS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge,
                                                        ">": operator.gt}
# metric -> True when lower is better (the sense "best" and the Pareto front read it in)
METRICS: dict[str, bool] = {
    "perplexity": True, "size_bytes": True, "bits_per_weight": True, "kl_to_base": True, "prefill_ms": True,
    "peak_mem_bytes": True, "nonzero_params": True, "params": True, "wall_s": True,
    "decode_tok_s": False, "top1_acc": False, "top1_agreement": False,
}
LATENCY_METRICS = ("prefill_ms", "decode_tok_s", "peak_mem_bytes")  # measured only with evaluation.latency
_TOKEN = re.compile(r"\s*(<=|>=|<|>|\*|\+|-|%|base\b|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_GRAMMAR = ('a comparison and a bound such as "<= 1.10 * base", "<= base + 2", "< 110% base" or "<= 5e6" '
            "(base: the base model's value of the same metric)")


@dataclass(frozen=True)
class Constraint:
    """``metric op scale * base + offset``; ``text`` is the expression as written."""

    metric: str
    op: str
    scale: float
    offset: float
    text: str

    def bound(self, base: float | None) -> float | None:
        """The bound for this base value (None when it needs a base that was not measured)."""
        if self.scale == 0:
            return self.offset
        return None if base is None else self.scale * base + self.offset

    def accepts(self, value: float | None, base: float | None) -> bool:
        """Whether ``value`` satisfies the constraint (a missing value never does)."""
        bound = self.bound(base)
        if value is None or bound is None or not math.isfinite(value):
            return False
        return OPERATORS[self.op](value, bound)

    def violation(self, value: float | None, base: float | None) -> float:
        """How far ``value`` is beyond the bound (<= 0: satisfied), as Optuna's constraints take it."""
        bound = self.bound(base)
        if value is None or bound is None or not math.isfinite(value):
            return math.inf
        return value - bound if self.op in ("<=", "<") else bound - value

    def describe(self, base: float | None) -> str:
        """'perplexity <= 1.10 * base (= 125.3)'."""
        bound = self.bound(base)
        return f"{self.metric} {self.text.strip()}" + (f" (= {bound:.6g})" if self.scale and bound is not None else "")


def _tokens(text: str, where: str) -> list[str]:
    tokens, position = [], 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        require(match is not None, f"{where}: cannot read {stripped[position:]!r} in {text!r}; write {_GRAMMAR}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def _number(token: str | None) -> float | None:
    try:
        return float(token) if token is not None else None
    except ValueError:
        return None


def _term(tokens: list[str], where: str, text: str) -> tuple[float, float]:
    """Read one term off the front of ``tokens``: (its factor of base, its constant)."""
    bad = f"{where}: {text!r} is not a bound; write {_GRAMMAR}"
    require(bool(tokens), bad)
    token = tokens.pop(0)
    if token == "base":
        if tokens[:1] == ["*"]:
            tokens.pop(0)
            factor = _number(tokens.pop(0) if tokens else None)
            require(factor is not None, bad)
            return factor, 0.0
        return 1.0, 0.0
    value = _number(token)
    require(value is not None, bad)
    if tokens[:1] == ["%"]:
        tokens.pop(0)
        value /= 100
        require(bool(tokens) and tokens[0] in ("*", "base"), bad)
    if tokens[:1] == ["*"]:
        tokens.pop(0)
        require(tokens[:1] == ["base"], bad)
    if tokens[:1] == ["base"]:
        tokens.pop(0)
        return value, 0.0
    return 0.0, value


def parse_constraint(metric: str, text: object) -> Constraint:
    """Parse ``text`` (e.g. ``"<= 1.10 * base"``) as a constraint on ``metric``; refused with the grammar."""
    where = f"constraint on {metric}"
    require(metric in METRICS, f"constraint on unknown metric {metric!r}; metrics: {', '.join(METRICS)}")
    if isinstance(text, int | float) and not isinstance(text, bool):
        text = f"<= {text}"  # a bare number: an upper bound
    require(isinstance(text, str), f"{where} must be text such as \"<= 1.10 * base\", got {text!r}")
    tokens = _tokens(text, where)
    require(bool(tokens) and tokens[0] in OPERATORS,
            f"{where}: {text!r} must start with <=, <, >= or >; write {_GRAMMAR}")
    op = tokens.pop(0)
    scale, offset = _term(tokens, where, text)
    while tokens:
        sign = tokens.pop(0)
        require(sign in ("+", "-"), f"{where}: unexpected {sign!r} in {text!r}; write {_GRAMMAR}")
        factor, constant = _term(tokens, where, text)
        direction = 1.0 if sign == "+" else -1.0
        scale, offset = scale + direction * factor, offset + direction * constant
    return Constraint(metric, op, scale, offset, text)


def parse_constraints(raw: object) -> tuple[Constraint, ...]:
    """The ``constraint:`` mapping of a sweep file (metric -> expression) parsed; None is no constraint."""
    if raw is None:
        return ()
    require(isinstance(raw, dict),
            f'constraint must be a mapping such as {{perplexity: "<= 1.10 * base"}}, got {raw!r}')
    return tuple(parse_constraint(str(metric), text) for metric, text in raw.items())
