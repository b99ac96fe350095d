"""The sensitivity atlas: what each option costs on each layer, and how those costs predict perplexity.

Two kinds of cost, both per (layer, option):

* **measured** - KL(base || model) per token and delta NLL, on held-out calibration windows, with only
  that layer changed (``core.plan.build``);
* **proxy** - the layer's output error from calibration statistics, each output channel weighted by the
  loss's mean squared gradient on it (``core.plan.proxy.fisher_cost``); the unweighted output error
  ``tr(dW H dW^T) / 2`` is kept beside it (``output_error``) for comparison.

A plan minimizes the sum of its layers' costs. To turn a sum into a perplexity, the atlas also scores
every *uniform* choice (all layers at option k) on the held-out windows: ``delta NLL_k`` against
``S_k``, the sum of the layers' costs at k. A power law ``delta NLL = a * S^gamma`` through those
points (least squares in log space; gamma 1 with one point) absorbs both the proxy's unknown units and
how layers' errors compound. Predicted perplexity = base perplexity x exp(a * S^gamma).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.plan.menu import Menu, menu_from_mapping
from core.plan.proxy import spearman
from core.plan.sizes import LayerShape

FORMAT_VERSION = 2  # 2: the proxy is gradient-weighted (1: the unweighted output error)


@dataclass(frozen=True)
class PowerFit:
    """delta NLL = a * S^gamma (S: a sum of layer costs)."""

    a: float
    gamma: float

    def __call__(self, cost_sum: float) -> float:
        return self.a * max(cost_sum, 0.0) ** self.gamma

    def inverse(self, nll_delta: float) -> float:
        """The largest cost sum whose predicted delta NLL is at most ``nll_delta`` (0 when it is <= 0)."""
        return (max(nll_delta, 0.0) / self.a) ** (1 / self.gamma) if self.a > 0 else math.inf


def fit_power(sums: list[float], deltas: list[float]) -> PowerFit:
    """Least-squares fit of log(delta) = log(a) + gamma * log(S) over the points where both are > 0."""
    points = [(s, d) for s, d in zip(sums, deltas, strict=True) if s > 0 and d > 0]
    if not points:
        return PowerFit(1.0, 1.0)
    if len(points) == 1 or len({s for s, _ in points}) == 1:
        return PowerFit(float(np.mean([d / s for s, d in points])), 1.0)
    x, y = np.log([s for s, _ in points]), np.log([d for _, d in points])
    gamma, log_a = np.polyfit(x, y, 1)
    return PowerFit(float(math.exp(log_a)), float(gamma))


@dataclass
class Atlas:
    """Costs [layers, options] of one model, calibration and menu; see the module docstring."""

    model: str
    menu: Menu
    layers: list[LayerShape]
    proxy: np.ndarray  # output error per (layer, option)
    kl: np.ndarray | None  # measured: KL(base || model) per token, nats
    nll: np.ndarray | None  # measured: delta NLL per token, nats
    uniform_nll: list[float]  # delta NLL of the model with every layer at option k (held-out windows)
    uniform_kl: list[float]
    base_nll: float  # the base model's NLL per token on the held-out windows
    fixed_bytes: int  # stored bytes of everything the plan does not choose
    element_size: int  # bytes per float weight as stored
    settings: dict[str, Any] = field(default_factory=dict)  # calibration, held-out windows, seqlen, include ...
    timings: dict[str, float] = field(default_factory=dict)  # seconds: statistics + solves, measuring, total
    key: str = ""
    output_error: np.ndarray | None = None  # the unweighted output error per (layer, option)

    @property
    def measured(self) -> bool:
        return self.kl is not None

    def costs(self, mode: str) -> np.ndarray:
        """What a plan minimizes: KL per layer and option (measured), or the proxy."""
        return self.kl if mode == "measured" and self.kl is not None else self.proxy

    def fit(self, mode: str) -> PowerFit:
        """delta NLL against the summed costs of the uniform choices (see the module docstring)."""
        sums = self.costs(mode).sum(axis=0)
        return fit_power([float(s) for s in sums], self.uniform_nll)

    @property
    def base_perplexity(self) -> float:
        return math.exp(self.base_nll)

    def spearman(self) -> dict[str, float] | None:
        """Rank correlation of the proxy with the measured KL: over every cell, and per option across layers."""
        if self.kl is None:
            return None
        found = _rank_agreement(self.proxy, self.kl)
        if self.output_error is not None:
            unweighted = _rank_agreement(self.output_error, self.kl)
            found.update(output_error_all=unweighted["all"], output_error_per_option_mean=unweighted["per_option_mean"])
        return found

    def restricted(self, options: list[int]) -> Atlas:
        """The same atlas over a subset of its menu's options (indices, in menu order): a plan that may
        only choose among them, with predictions fitted on their uniform choices alone."""
        def columns(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[:, options]

        menu = Menu(self.menu.technique, self.menu.method, tuple(self.menu.options[k] for k in options))
        return Atlas(self.model, menu, self.layers, columns(self.proxy), columns(self.kl), columns(self.nll),
                     [self.uniform_nll[k] for k in options], [self.uniform_kl[k] for k in options], self.base_nll,
                     self.fixed_bytes, self.element_size, dict(self.settings), dict(self.timings),
                     f"{self.key}:{'-'.join(map(str, options))}", columns(self.output_error))

    def to_dict(self) -> dict[str, Any]:
        def rows(a: np.ndarray | None) -> list | None:
            return None if a is None else a.tolist()

        return {"format": FORMAT_VERSION, "model": self.model, "menu": self.menu.as_dict(),
                "layers": [[layer.name, layer.rows, layer.cols] for layer in self.layers],
                "proxy": rows(self.proxy), "kl": rows(self.kl), "nll": rows(self.nll),
                "uniform_nll": self.uniform_nll, "uniform_kl": self.uniform_kl, "base_nll": self.base_nll,
                "fixed_bytes": self.fixed_bytes, "element_size": self.element_size, "settings": self.settings,
                "timings": self.timings, "key": self.key, "output_error": rows(self.output_error)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Atlas:
        def array(value: list | None) -> np.ndarray | None:
            return None if value is None else np.asarray(value, dtype=np.float64)

        return cls(model=raw["model"], menu=menu_from_mapping(raw["menu"]),
                   layers=[LayerShape(name, rows, cols) for name, rows, cols in raw["layers"]],
                   proxy=array(raw["proxy"]), kl=array(raw["kl"]), nll=array(raw["nll"]),
                   uniform_nll=list(raw["uniform_nll"]), uniform_kl=list(raw["uniform_kl"]),
                   base_nll=float(raw["base_nll"]), fixed_bytes=int(raw["fixed_bytes"]),
                   element_size=int(raw["element_size"]), settings=dict(raw.get("settings") or {}),
                   timings=dict(raw.get("timings") or {}), key=raw.get("key", ""),
                   output_error=array(raw.get("output_error")))


def _rank_agreement(proxy: np.ndarray, kl: np.ndarray) -> dict:
    """Spearman of ``proxy`` with ``kl``: over every cell, and per option across layers (and their mean)."""
    per_option = [spearman(proxy[:, k], kl[:, k]) for k in range(proxy.shape[1])]
    finite = [value for value in per_option if math.isfinite(value)]
    return {"all": spearman(proxy, kl), "per_option_mean": float(np.mean(finite)) if finite else math.nan,
            "per_option": per_option}
