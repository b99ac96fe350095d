"""Frozen, self-validating specs and the Recipe that strings them together.

A recipe file (YAML or JSON) looks like::

    model: sample:teacher
    steps: []                       # prune / quantize / distill steps, applied in order
    calibration: {text: default, samples: 128, seqlen: 512, seed: 0}
    evaluation: {text: default, seqlen: 512, max_windows: 64}
    export: {format: hf, path: out/model}   # optional: hf | compressed-tensors | gguf (core.export.ExportSpec)

Every key but ``model`` has a default. Validation happens in ``__post_init__`` so a bad value is
refused, with what was given and what is allowed, before any work starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from core.errors import SpecError

# Step kinds the recipe format defines; core.steps says which this version can run.
STEP_KINDS = ("prune", "quantize", "distill")


def _is_count(value: Any, minimum: int) -> bool:
    """A whole number (not a bool, which Python counts as an int) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration text for data-aware methods: ``samples`` random windows of ``seqlen`` tokens."""

    text: str = "default"
    samples: int = 128
    seqlen: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        _require(_is_count(self.samples, 1),
                 f"calibration.samples must be a whole number >= 1, got {self.samples!r}")
        _require(_is_count(self.seqlen, 2),
                 f"calibration.seqlen must be a whole number >= 2, got {self.seqlen!r}")
        _require(_is_count(self.seed, 0), f"calibration.seed must be a whole number, got {self.seed!r}")


@dataclass(frozen=True)
class EvalSpec:
    """How a model is measured; every figure is reported beside these settings."""

    text: str = "default"
    seqlen: int | None = None  # None: 512, or the model's context length when that is shorter
    max_windows: int | None = 64  # None: every window of the text
    latency: bool = True  # also measure prefill / decode speed and peak memory
    compare_to_base: bool = True  # after steps: base perplexity, top-1 agreement, KL (a second forward pass)
    prompt_tokens: int = 128
    new_tokens: int = 32
    latency_runs: int = 5

    def __post_init__(self) -> None:
        _require(isinstance(self.text, str), f"evaluation.text must be a text source name or path, got {self.text!r}")
        _require(self.seqlen is None or _is_count(self.seqlen, 2),
                 f"evaluation.seqlen must be a whole number >= 2, got {self.seqlen!r}")
        _require(self.max_windows is None or _is_count(self.max_windows, 1),
                 f"evaluation.max_windows must be a whole number >= 1 (or omitted for all), got {self.max_windows!r}")
        for name in ("latency", "compare_to_base"):
            _require(isinstance(getattr(self, name), bool),
                     f"evaluation.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("prompt_tokens", "new_tokens", "latency_runs"):
            value = getattr(self, name)
            _require(_is_count(value, 1),
                     f"evaluation.{name} must be a whole number >= 1, got {value!r}")

    def resolved_seqlen(self, context_length: int) -> int:
        """The window length to use for a model with ``context_length`` positions."""
        if self.seqlen is None:
            return min(512, context_length)
        _require(self.seqlen <= context_length,
                 f"evaluation.seqlen={self.seqlen} is longer than the model's context ({context_length} tokens); "
                 f"use at most {context_length}")
        return self.seqlen


@dataclass(frozen=True)
class Step:
    """One compression step: its kind, its parameters as written, and the validated step object."""

    kind: str
    params: dict = field(default_factory=dict)
    parsed: Any = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        _require(self.kind in STEP_KINDS, f"unknown step {self.kind!r}; steps are {', '.join(STEP_KINDS)}")
        from core.steps import parse_step  # the engines import torch; specs stay importable without them

        object.__setattr__(self, "parsed", parse_step(self.kind, dict(self.params)))


@dataclass(frozen=True)
class Recipe:
    """A model reference, compression steps in order, and how to calibrate and evaluate."""

    model: str
    steps: tuple[Step, ...] = ()
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    evaluation: EvalSpec = field(default_factory=EvalSpec)
    export: dict | None = None
    device: str | None = None  # None / "auto": cuda > mps > cpu
    dtype: str | None = None  # None / "auto": fp32 on CPU, bf16/fp16 on GPU

    def __post_init__(self) -> None:
        _require(isinstance(self.model, str) and bool(self.model.strip()),
                 "a recipe needs `model:` - a sample (sample:teacher), a folder, a .gguf file or a Hub id")
        if self.export is not None:
            from core.export import ExportSpec  # the engines import torch; specs stay importable without them

            ExportSpec.from_dict(self.export)  # refused here, with what is allowed, before anything runs

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the recipe-file layout (round-trips through ``from_dict``)."""
        data = asdict(self)
        data["steps"] = [{step.kind: dict(step.params)} for step in self.steps]  # as written, not as parsed
        return {key: value for key, value in data.items() if value is not None}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build a recipe from parsed YAML/JSON; unknown keys are refused by name."""
        _require(isinstance(data, dict), f"a recipe must be a mapping of keys to values, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, f"unknown recipe key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(
            model=data.get("model", ""),
            steps=tuple(_parse_step(raw) for raw in data.get("steps") or ()),
            calibration=_section(CalibrationSpec, data.get("calibration"), "calibration"),
            evaluation=_section(EvalSpec, data.get("evaluation"), "evaluation"),
            export=data.get("export"),
            device=data.get("device"),
            dtype=data.get("dtype"),
        )


def _parse_step(raw: Any) -> Step:
    _require(isinstance(raw, dict) and len(raw) == 1,
             f"each step is a one-key mapping such as {{prune: {{method: wanda}}}}, got {raw!r}")
    (kind, params), = raw.items()
    _require(params is None or isinstance(params, dict),
             f"the parameters of step {kind!r} must be a mapping such as {{method: wanda, sparsity: 0.5}}, "
             f"got {params!r}")
    return Step(kind, dict(params or {}))


def _section(spec_type: type, raw: Any, name: str):
    if raw is None:
        return spec_type()
    _require(isinstance(raw, dict), f"`{name}:` must be a mapping, got {raw!r}")
    allowed = {f.name for f in fields(spec_type)}
    unknown = sorted(set(raw) - allowed)
    _require(not unknown, f"unknown key(s) in `{name}:` {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    try:
        return spec_type(**raw)
    except TypeError as exc:
        raise SpecError(f"`{name}:` {exc}") from exc


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a ``.yaml``/``.yml`` or ``.json`` file."""
    path = Path(path)
    _require(path.is_file(), f"recipe file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    return Recipe.from_dict(data)
