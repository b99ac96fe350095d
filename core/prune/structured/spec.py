"""``StructuredSpec``: which units to remove (MLP channels, attention heads / KV groups, whole blocks).

In a recipe::

    steps:
      - prune: {method: structured, target: mlp_channels, fraction: 0.25, importance: activation_norm}
      - prune: {method: structured, target: layers, layers: [3, 7]}

A recipe always has calibration text, so its ranking defaults to activation norms; "weight_norm" is known
to collapse models whose norm gains make small-weight channels carry large activations (``known_risk``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core.checks import check_keys, require, require_mapping

TARGETS = ("mlp_channels", "heads", "layers")

IMPORTANCES = ("weight_norm", "activation_norm")

_SPEC_KEYS = ("method", "target", "fraction", "importance", "layers")
DEFAULT_IMPORTANCE = "activation_norm"  # with calibration text; without it, weight norms are all there is

WEIGHT_NORM_RISK = ("ranking {units} by weight norms is known to collapse models whose norm gains make small-weight "
                    "channels carry large activations (SmolLM2-135M, 25% of MLP channels: perplexity 2,889,293 "
                    "against 47.72 ranked by activation norms); use importance: activation_norm")


@dataclass(frozen=True)
class StructuredSpec:
    """Remove a ``fraction`` of the ``target`` units, the least important first; ``layers`` (target
    "layers" only) names blocks to drop instead. "activation_norm" needs calibration token ids; None (the
    default) ranks by activation norms when calibration ids are given, else by weight norms."""

    target: str
    fraction: float | None = None  # share of units removed, in (0, 1); None only with `layers`
    importance: str | None = None
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        require(self.target in TARGETS, f"target {self.target!r} is unknown; use one of {', '.join(TARGETS)}")
        require(self.importance is None or self.importance in IMPORTANCES,
                f"importance {self.importance!r} is unknown; use one of {', '.join(IMPORTANCES)}")
        if self.layers is not None:
            self._check_layers()
        require(self.fraction is not None or self.layers is not None,
                f"target {self.target!r} needs a fraction in (0, 1), the share of units removed (e.g. 0.25)")
        if self.fraction is not None:
            ok = isinstance(self.fraction, int | float) and not isinstance(self.fraction, bool)
            require(ok and 0.0 < self.fraction < 1.0,
                    f"fraction must be a number strictly between 0 and 1 (the share removed), got {self.fraction!r}")

    def _check_layers(self) -> None:
        require(self.target == "layers",
                f"layers=... names blocks to drop and only goes with target 'layers', not {self.target!r}")
        require(self.fraction is None, "give either fraction or layers for target 'layers', not both")
        layers = self.layers
        ok = isinstance(layers, Sequence) and not isinstance(layers, str) and len(layers) > 0
        ok = ok and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)
        require(ok, f"layers must be a non-empty list of block indices (whole numbers from 0), got {layers!r}")
        require(len(set(layers)) == len(layers), f"layers lists a block twice: {list(layers)}")
        object.__setattr__(self, "layers", tuple(sorted(layers)))

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> StructuredSpec:
        """From the recipe form ``{method: structured, target: ..., fraction: ...}``; unknown keys refused."""
        require_mapping(params, "structured pruning parameters", "{method: structured, target: heads, fraction: 0.25}")
        check_keys(params, _SPEC_KEYS, "prune parameter", "structured pruning")
        method = params.get("method", "structured")
        require(method == "structured", f"method {method!r} is not structured pruning; use method: structured")
        require("target" in params, f"structured pruning needs a target: one of {', '.join(TARGETS)}")
        layers = params.get("layers")
        return cls(target=params["target"], fraction=params.get("fraction"),
                   importance=params.get("importance", DEFAULT_IMPORTANCE),
                   layers=tuple(layers) if isinstance(layers, list) else layers)

    @property
    def needs_calibration(self) -> bool:
        """Activation norms need calibration text; so does ranking blocks to drop by a fraction."""
        return self.importance == "activation_norm" or (self.target == "layers" and not self.layers)

    def ranking(self, calibrated: bool) -> str:
        """The importance used: the one asked for, else activation norms when ``calibrated``, else weight norms."""
        return self.importance or (DEFAULT_IMPORTANCE if calibrated else "weight_norm")

    @property
    def known_risk(self) -> str | None:
        """Why this setting is known to collapse a model (said before it runs), or None."""
        if self.importance != "weight_norm" or self.target == "layers":
            return None
        return WEIGHT_NORM_RISK.format(units="MLP channels" if self.target == "mlp_channels" else "attention heads")

    @property
    def label(self) -> str:
        """Short description for charts and tables, e.g. 'structured mlp_channels 25%' or 'structured heads
        12.5% by activation_norm'; settings that differ give labels that differ."""
        if self.fraction is None:
            return f"structured {self.target} {list(self.layers or [])}"
        ranking = "" if self.importance in (None, "weight_norm") else f" by {self.importance}"
        return f"structured {self.target} {100 * self.fraction:.4g}%{ranking}"

    def to_dict(self) -> dict[str, Any]:
        """The recipe form (round-trips through ``from_dict``)."""
        data = {"method": "structured", **asdict(self)}
        if self.layers is not None:
            data["layers"] = list(self.layers)
        return {key: value for key, value in data.items() if value is not None}


@dataclass(frozen=True)
class StructuredReport:
    """What was removed, the parameter counts before and after, and what the config now says."""

    target: str
    importance: str
    removed: dict[int, tuple[int, ...]]  # block index -> removed channel / KV-group indices
    removed_layers: tuple[int, ...]  # blocks dropped (target "layers"), original indices
    params_before: int
    params_after: int
    config_changes: dict[str, Any] = field(default_factory=dict)  # config key -> new value

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
