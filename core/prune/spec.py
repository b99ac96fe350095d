"""``PruneSpec``: unstructured and N:M pruning (magnitude, Wanda, SparseGPT), validated on creation.

* magnitude - drop the smallest |w| (per matrix, globally, or below a fixed threshold); no data.
* wanda     - Sun et al. 2023: score |W_ij| * ||X_j||_2 and drop the lowest within each output row.
* sparsegpt - Frantar & Alistarh 2023: choose the mask block by block from w^2 / [H^-1]_jj^2 and
  update the remaining weights to compensate (optimal brain surgeon with H = 2 X^T X / N).

Per-layer sparsity: ``overrides`` give a sparsity per layer-name pattern (the first match wins; 0 keeps
a layer dense); ``owl`` (wanda, sparsegpt) derives each block's sparsity from its outlier share around
the target (``core.prune.owl``); a ``budget`` lets the planner (``core.plan``) write the overrides.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core.checks import check_keys, checked_params, is_number, name_patterns, require, require_mapping
from core.plan.menu import parse_budget
from core.prune.owl import DEFAULT_LAMBDA, DEFAULT_M

METHODS = ("magnitude", "wanda", "sparsegpt")

SCOPES = ("per-matrix", "global")

UNSTRUCTURED = "unstructured"

_NM_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``None`` for "unstructured", ``(n, m)`` for "N:M" with 0 < N < M; SpecError otherwise."""
    match = _NM_PATTERN.match(pattern) if isinstance(pattern, str) else None
    if pattern == UNSTRUCTURED:
        return None
    require(match is not None and 0 < int(match[1]) < int(match[2]),
            f"pattern {pattern!r} is not understood; use 'unstructured' or N:M with whole numbers 0 < N < M "
            "(keep N of every M consecutive weights), such as '2:4' or '4:8'")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class PruneSpec:
    """What to prune and how; validated on creation. In a recipe::

        steps:
          - prune: {method: sparsegpt, sparsity: 0.5, pattern: unstructured}   # or magnitude / wanda; pattern "2:4"

    ``sparsity`` is the fraction of weights set to zero in each selected matrix (or across all of
    them with ``scope="global"``); an N:M pattern implies ``1 - N/M`` and fills it in.
    """

    method: str
    sparsity: float | None = None  # in [0, 1); exactly one of sparsity / threshold (unstructured)
    threshold: float | None = None  # magnitude only: zero every |w| below it, in every selected layer
    pattern: str = UNSTRUCTURED  # or "N:M": keep N of every M consecutive input weights (2:4 runs fast on GPUs)
    scope: str = "per-matrix"  # "global": one |w| cut across all selected layers (magnitude only)
    include: tuple[str, ...] = ("*",)  # shell patterns over qualified layer names
    exclude: tuple[str, ...] = ()
    blocksize: int = 128  # SparseGPT: columns solved together (lazy updates between blocks)
    percdamp: float = 0.01  # SparseGPT: damping added to H's diagonal, as a fraction of its mean
    overrides: tuple[dict, ...] = ()  # [{pattern: "model.layers.0.*", sparsity: 0.3}, ...]: first match wins
    owl: dict | None = None  # {lambda: 0.08, m: 5}: outlier-weighted per-block sparsity (wanda, sparsegpt)
    budget: dict | None = None  # sparsity | size_mb | max_ppl and the levels (core.plan.menu): planned before the run
    planned: dict | None = None  # what the planner predicted (informational)

    def __post_init__(self) -> None:
        require(self.method in METHODS,
                f"prune method {self.method!r} is not known; choose one of {', '.join(METHODS)}")
        nm = parse_pattern(self.pattern)
        object.__setattr__(self, "include", name_patterns(self.include, "include"))
        object.__setattr__(self, "exclude", name_patterns(self.exclude, "exclude"))
        if self.budget is not None:
            require(nm is None and self.threshold is None and self.sparsity is None and not self.overrides
                    and not self.owl, "a prune budget chooses each layer's sparsity itself: give it without "
                                      "sparsity, threshold, pattern, overrides or owl")
            parse_budget(self.budget, "prune", self.method)
        else:
            self._check_amount(nm)
        self._check_per_layer(nm)
        require(self.scope in SCOPES, f"scope {self.scope!r} is not known; use one of {', '.join(SCOPES)}")
        require(self.scope == "per-matrix" or (self.method == "magnitude" and nm is None),
                f"scope 'global' (one |w| cut across all layers) works only with method magnitude and pattern "
                f"unstructured, got method {self.method!r}, pattern {self.pattern!r}; use scope 'per-matrix'")
        require(isinstance(self.blocksize, int) and not isinstance(self.blocksize, bool) and self.blocksize >= 1,
                f"blocksize must be a whole number >= 1 (128 is usual), got {self.blocksize!r}")
        require(is_number(self.percdamp) and self.percdamp >= 0,
                f"percdamp must be a number >= 0 (0.01 is usual), got {self.percdamp!r}")

    def _check_amount(self, nm: tuple[int, int] | None) -> None:
        if self.threshold is not None:
            require(self.method == "magnitude",
                    f"threshold={self.threshold!r} works only with method magnitude ({self.method} ranks weights "
                    "by data-aware scores, not |w|); give sparsity instead")
            require(is_number(self.threshold) and self.threshold >= 0,
                    f"threshold must be a number >= 0 (weights with smaller |w| are zeroed), got {self.threshold!r}")
            require(nm is None and self.sparsity is None,
                    f"give one of threshold or sparsity/pattern, not both (got threshold={self.threshold!r}, "
                    f"sparsity={self.sparsity!r}, pattern={self.pattern!r})")
            object.__setattr__(self, "threshold", float(self.threshold))
            return
        if nm is not None:
            implied = 1.0 - nm[0] / nm[1]
            require(self.sparsity is None or (is_number(self.sparsity) and abs(self.sparsity - implied) < 1e-9),
                    f"pattern {self.pattern} implies sparsity {implied:g}, got sparsity={self.sparsity!r}; "
                    "leave sparsity out")
            object.__setattr__(self, "sparsity", implied)
            return
        require(self.sparsity is not None, "give sparsity (a fraction in [0, 1)) or, for magnitude, a threshold")
        require(is_number(self.sparsity) and 0 <= self.sparsity < 1,
                f"sparsity must be a number in [0, 1) (the fraction of weights set to zero), got {self.sparsity!r}; "
                 "1 would remove every weight")
        object.__setattr__(self, "sparsity", float(self.sparsity))

    def _check_per_layer(self, nm: tuple[int, int] | None) -> None:
        per_layer = bool(self.overrides) or self.owl is not None
        require(not per_layer or (nm is None and self.threshold is None and self.scope == "per-matrix"),
                "per-layer sparsity (overrides, owl) needs an unstructured pattern, a sparsity and scope per-matrix")
        overrides = tuple(_override(raw) for raw in self.overrides or ())
        object.__setattr__(self, "overrides", overrides)
        if self.owl is not None:
            require(self.method in ("wanda", "sparsegpt"),
                    f"owl sets per-block sparsity from Wanda scores: use it with wanda or sparsegpt, not {self.method}")
            object.__setattr__(self, "owl", _owl(self.owl))
        require(self.planned is None or isinstance(self.planned, dict), "planned must be a mapping (the planner's)")

    def sparsity_for(self, name: str) -> float:
        """The sparsity of layer ``name``: its first matching override, else ``sparsity``."""
        for override in self.overrides:
            if fnmatch.fnmatch(name, override["pattern"]):
                return override["sparsity"]
        return self.sparsity or 0.0

    @property
    def nm(self) -> tuple[int, int] | None:
        """(n, m) for an N:M pattern, else None."""
        return parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        """Wanda and SparseGPT rank weights by calibration activations; magnitude needs none, unless a budget
        is planned (the atlas reads calibration windows)."""
        return self.method != "magnitude" or self.budget is not None

    @property
    def label(self) -> str:
        """Short description for charts and tables, e.g. 'wanda 50% 2:4' or 'magnitude t=0.01'."""
        amount = f"t={self.threshold:g}" if self.threshold is not None else f"{self.sparsity or 0:.0%}"
        pattern = "" if self.pattern == UNSTRUCTURED else f" {self.pattern}"
        scope = " global" if self.scope == "global" else ""
        if self.budget is not None:
            return f"{self.method} plan {parse_budget(self.budget, 'prune', self.method)[0].label()}"
        per_layer = " owl" if self.owl else f" +{len(self.overrides)} overrides" if self.overrides else ""
        if self.planned:
            return f"{self.method} planned {self.planned.get('budget_label', '')}".rstrip()
        return f"{self.method} {amount}{pattern}{scope}{per_layer}"

    def as_dict(self) -> dict:
        """The recipe form (lists for include/exclude); ``from_dict`` reads it back."""
        data = asdict(self)
        data.update(include=list(self.include), exclude=list(self.exclude), overrides=[dict(o) for o in self.overrides])
        return data

    @classmethod
    def from_dict(cls, params: Mapping) -> PruneSpec:
        """Build from a recipe's ``prune:`` mapping, e.g. ``{method: wanda, sparsity: 0.5}``; unknown keys refused."""
        values = checked_params(cls, params, "prune")
        require("method" in values, f"a prune step needs a method: one of {', '.join(METHODS)}")
        return cls(**values)


def _override(raw: Any) -> dict:
    """One ``{pattern, sparsity}`` override, validated."""
    require_mapping(raw, "a prune override", "{pattern: 'model.layers.0.*', sparsity: 0.3}")
    check_keys(raw, ("pattern", "sparsity"), "prune override key")
    require(isinstance(raw.get("pattern"), str) and bool(raw["pattern"]) and "sparsity" in raw,
            f"a prune override needs a pattern and a sparsity, e.g. {{pattern: '*.mlp.*', sparsity: 0.6}}; got {raw!r}")
    require(is_number(raw["sparsity"]) and 0 <= raw["sparsity"] < 1,
            f"an override's sparsity must be in [0, 1), got {raw['sparsity']!r}")
    return {"pattern": raw["pattern"], "sparsity": float(raw["sparsity"])}


def _owl(raw: Any) -> dict:
    """``owl: {lambda, m}`` with the paper's defaults filled in."""
    require_mapping(raw, "owl", "{lambda: 0.08, m: 5}")
    check_keys(raw, ("lambda", "m"), "owl key")
    lam, m = raw.get("lambda", DEFAULT_LAMBDA), raw.get("m", DEFAULT_M)
    require(is_number(lam) and 0 <= lam < 0.5, f"owl lambda (the largest change of a block's sparsity, halved) must "
                                               f"be in [0, 0.5), e.g. 0.08; got {lam!r}")
    require(is_number(m) and m > 0, f"owl m (outliers: scores above m x the mean) must be > 0, e.g. 5; got {m!r}")
    return {"lambda": float(lam), "m": float(m)}
