"""The menu: what each layer may be given, and the budget a plan must keep.

A plan covers one technique: a quantization menu (one method; bits x group sizes) or a pruning menu
(one method; sparsity levels). Every selected linear layer of the decoder blocks takes exactly one
option. In a recipe the same settings sit in a step's ``budget:`` mapping::

    steps:
      - quantize: {method: gptq, group_size: 64, budget: {avg_bits: 3.5, bits: [3, 4], mode: measured}}
      - prune: {method: wanda, budget: {sparsity: 0.6, levels: [0.4, 0.5, 0.6, 0.7, 0.8]}}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core.checks import check_keys, is_count, is_number, require, require_mapping

# core.quantize.scheme.BITS_RANGE, written out: the quantize and prune specs read this module, so it
# imports nothing of theirs (tests/test_plan.py checks the two agree)
BITS_RANGE = (2, 8)

QUANT_METHODS = ("rtn", "gptq", "awq")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")
MODES = ("proxy", "measured")
TARGETS = ("avg_bits", "size_mb", "sparsity", "max_ppl")  # what a budget bounds
DEFAULT_BITS = (2, 3, 4, 8)
DEFAULT_LEVELS = (0.0, 0.25, 0.5, 0.75)
DEFAULT_HELDOUT = 2  # calibration windows kept out of the statistics, on which measured costs are scored
MENU_KEYS = ("bits", "group_sizes", "levels", "mode", "heldout", "heldout_tokens")


@dataclass(frozen=True)
class Option:
    """One choice for a layer: a quantization scheme (``bits`` set) or a sparsity (``sparsity`` set)."""

    bits: int | None = None
    group_size: int | None = None
    symmetric: bool = True
    sparsity: float | None = None

    @property
    def label(self) -> str:
        if self.bits is None:
            return f"{self.sparsity:.0%}"
        group = f"g{self.group_size}" if self.group_size else "ch"
        return f"w{self.bits} {group}"


@dataclass(frozen=True)
class Menu:
    """The options every layer chooses from, for one technique and method."""

    technique: str  # "quantize" | "prune"
    method: str
    options: tuple[Option, ...]

    def __post_init__(self) -> None:
        methods = QUANT_METHODS if self.technique == "quantize" else PRUNE_METHODS
        require(self.technique in ("quantize", "prune"), f"a menu is for quantize or prune, got {self.technique!r}")
        require(self.method in methods, f"a {self.technique} plan takes method {' | '.join(methods)}, "
                                        f"got {self.method!r}")
        require(len(self.options) >= 1, "a menu needs at least one option")
        require(len(set(self.options)) == len(self.options), "the menu lists an option twice")

    @property
    def labels(self) -> list[str]:
        return [option.label for option in self.options]

    def as_dict(self) -> dict[str, Any]:
        return {"technique": self.technique, "method": self.method, "options": [asdict(o) for o in self.options]}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


def quantize_menu(method: str, bits: tuple[int, ...] = DEFAULT_BITS, group_sizes: tuple[int | None, ...] = (None,),
                  symmetric: bool = True) -> Menu:
    """Every (bits, group size) pair, lightest first."""
    low, high = BITS_RANGE
    require(bool(bits) and all(is_count(b) and low <= b <= high for b in bits),
            f"bits must be whole numbers from {low} to {high}, such as [3, 4]; got {list(bits)!r}")
    require(bool(group_sizes) and all(g is None or is_count(g, 1) for g in group_sizes),
            f"group sizes must be whole numbers (e.g. 32, 64) or 0 for per channel; got {list(group_sizes)!r}")
    options = [Option(b, g or None, symmetric) for b in sorted(set(bits)) for g in dict.fromkeys(group_sizes)]
    return Menu("quantize", method, tuple(options))


def prune_menu(method: str, levels: tuple[float, ...] = DEFAULT_LEVELS) -> Menu:
    """Every sparsity level, densest first."""
    require(bool(levels) and all(is_number(s) and 0 <= s < 1 for s in levels),
            f"sparsity levels must be numbers in [0, 1), such as [0, 0.25, 0.5, 0.75]; got {list(levels)!r}")
    return Menu("prune", method, tuple(Option(sparsity=float(s)) for s in sorted(set(levels))))


@dataclass(frozen=True)
class Budget:
    """What a plan must keep: exactly one bound, and how the costs are found.

    ``avg_bits``: bits per weight of the planned layers as stored (codes, fp16 scales, zero points,
    sparse storage); ``size_mb``: bytes of all weights as stored, in 10^6; ``sparsity``: share of the
    planned layers' weights that are zero; ``max_ppl``: the predicted perplexity (smallest size that keeps it).
    """

    target: str
    value: float
    mode: str = "proxy"
    heldout: int = DEFAULT_HELDOUT
    heldout_tokens: int | None = None  # tokens of each held-out window that are scored (None: all of them)

    def __post_init__(self) -> None:
        require(self.target in TARGETS, f"a budget bounds one of {', '.join(TARGETS)}, got {self.target!r}")
        require(is_number(self.value), f"budget {self.target} must be a number, got {self.value!r}")
        require(self.value > 0 if self.target != "sparsity" else 0 <= self.value < 1,
                f"budget {self.target}={self.value!r} is impossible: "
                + ("a sparsity is a share in [0, 1)" if self.target == "sparsity" else "it must be above 0"))
        require(self.mode in MODES, f"mode must be proxy or measured, got {self.mode!r}")
        require(is_count(self.heldout, 1), f"heldout must be a whole number of windows >= 1, got {self.heldout!r}")
        require(self.heldout_tokens is None or is_count(self.heldout_tokens, 2),
                f"heldout_tokens must be a whole number >= 2 (or left out), got {self.heldout_tokens!r}")

    def label(self) -> str:
        unit = {"avg_bits": " bits/weight", "size_mb": " MB", "sparsity": " sparsity", "max_ppl": " perplexity"}
        value = f"{self.value:.0%}" if self.target == "sparsity" else f"{self.value:g}"
        return f"{'<= ' if self.target != 'sparsity' else '>= '}{value}{unit[self.target]}"


def parse_budget(raw: Any, technique: str, method: str, group_size: int | None = None,
                 symmetric: bool = True) -> tuple[Budget, Menu]:
    """A step's ``budget:`` mapping as (Budget, Menu); refused with what is allowed."""
    example = "{avg_bits: 3.5, bits: [3, 4]}" if technique == "quantize" else "{sparsity: 0.6, levels: [0.5, 0.7]}"
    require_mapping(raw, "budget", example)
    targets = ("avg_bits", "size_mb", "max_ppl") if technique == "quantize" else ("sparsity", "size_mb", "max_ppl")
    check_keys(raw, (*targets, *MENU_KEYS), "budget key")
    given = [t for t in targets if t in raw]
    require(len(given) == 1, f"a {technique} budget gives exactly one of {', '.join(targets)}, got "
                             f"{', '.join(given) or 'none'}; e.g. budget: {example}")
    budget = Budget(given[0], raw[given[0]], raw.get("mode", "proxy"), raw.get("heldout", DEFAULT_HELDOUT),
                    raw.get("heldout_tokens"))
    if technique == "quantize":
        groups = raw.get("group_sizes", [group_size or 0])
        require(isinstance(groups, list | tuple), f"group_sizes must be a list such as [64], got {groups!r}")
        bits = raw.get("bits", list(DEFAULT_BITS))
        require(isinstance(bits, list | tuple), f"bits must be a list such as [3, 4], got {bits!r}")
        return budget, quantize_menu(method, tuple(bits), tuple(g or None for g in groups), symmetric)
    levels = raw.get("levels", list(DEFAULT_LEVELS))
    require(isinstance(levels, list | tuple), f"levels must be a list such as [0.5, 0.7], got {levels!r}")
    return budget, prune_menu(method, tuple(levels))


def budget_mapping(budget: Budget, menu: Menu) -> dict[str, Any]:
    """The ``budget:`` mapping that ``parse_budget`` reads back to the same budget and menu."""
    raw: dict[str, Any] = {budget.target: budget.value, "mode": budget.mode, "heldout": budget.heldout}
    if budget.heldout_tokens is not None:
        raw["heldout_tokens"] = budget.heldout_tokens
    if menu.technique == "quantize":
        raw["bits"] = sorted({o.bits for o in menu.options})
        raw["group_sizes"] = [g or 0 for g in dict.fromkeys(o.group_size for o in menu.options)]
    else:
        raw["levels"] = [o.sparsity for o in menu.options]
    return raw


def menu_from_mapping(raw: Mapping[str, Any]) -> Menu:
    """Inverse of ``Menu.as_dict`` (the cache stores menus this way)."""
    return Menu(raw["technique"], raw["method"], tuple(Option(**o) for o in raw["options"]))
