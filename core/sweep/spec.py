"""The sweep file: a base recipe, what to vary (a grid or an Optuna search), and what counts as acceptable.

A sweep file (YAML or JSON)::

    sweep: bits-by-method            # its name; running the same name again resumes it
    base:                            # an ordinary recipe
      model: sample:teacher
      steps:
        - quantize: {method: rtn, bits: 4, group_size: 32}
      evaluation: {max_windows: 8}
    grid:                            # the cartesian product over dotted paths into the recipe
      steps.0.quantize.bits: [2, 3, 4, 8]
      steps.0.quantize.method: [rtn, gptq]
    # or a list of such mappings (the union of their products), or instead of grid a search:
    # search: {space: {steps.0.quantize.bits: {int: [2, 8]}}, objectives: {perplexity: min, size_bytes: min},
    #          trials: 30, sampler: tpe}
    constraint: {perplexity: "<= 1.10 * base"}   # optional: which trials count as acceptable
    resources: {cpus: 1, gpus: 0}                # per trial, on a Ray cluster

Everything is checked here, before any model is loaded: the name, the base recipe, every path and
value (each trial's recipe is built and validated by ``core.sweep.grid``), the objectives and the
constraint expressions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.checks import check_keys, is_count, is_number, require, require_mapping
from core.errors import SpecError
from core.recipe.recipe import Recipe
from core.sweep.constraint import LATENCY_METRICS, METRICS, Constraint, parse_constraints
from core.sweep.paths import split_path

KEYS = ("sweep", "base", "grid", "search", "objectives", "constraint", "resources")
SEARCH_KEYS = ("space", "objectives", "trials", "sampler", "seed")
SAMPLERS = ("tpe", "nsga2", "random")
KINDS = ("int", "float", "choice")
DEFAULT_OBJECTIVES = {"perplexity": "min", "size_bytes": "min"}
# paths a sweep may not vary: trials compare one model on one evaluation, and each writes its own row
FIXED = {"model": "the model", "evaluation": "the evaluation (trials must be scored on the same windows)",
         "device": "the device", "dtype": "the dtype"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@dataclass(frozen=True)
class ParamRange:
    """One dimension of a search space: ``{int: [2, 8]}``, ``{float: [0.0, 0.7], step: 0.1}``, ``{choice: [...]}``."""

    path: str
    kind: str
    values: tuple  # (low, high) for int / float; the choices for choice
    step: float | None = None
    log: bool = False

    @classmethod
    def from_dict(cls, path: str, raw: Any) -> ParamRange:
        where = f"search.space.{path}"
        require_mapping(raw, where, "{int: [2, 8]}, {float: [0.0, 0.7], step: 0.1} or {choice: [rtn, gptq]}")
        kinds = [k for k in raw if k in KINDS]
        require(len(kinds) == 1, f"{where} needs exactly one of int, float, choice, got {sorted(raw)}")
        kind = kinds[0]
        check_keys(raw, (kind, "step", "log"), "key", where)
        values = raw[kind]
        require(isinstance(values, list | tuple) and len(values) >= (1 if kind == "choice" else 2),
                f"{where}.{kind} must be a list ({'the choices' if kind == 'choice' else '[low, high]'}), "
                f"got {values!r}")
        if kind != "choice":
            low, high = (values[0], values[1]) if len(values) == 2 else (None, None)
            whole = kind == "int"
            ok = all(is_count(v, -(10**9)) if whole else is_number(v) for v in (low, high))
            require(len(values) == 2 and ok and low < high,
                    f"{where}.{kind} must be [low, high] with low < high{' (whole numbers)' if kind == 'int' else ''}, "
                    f"got {values!r}")
            require(not raw.get("log") or low > 0, f"{where}: a log scale needs low > 0, got {low}")
        else:
            require(all(isinstance(v, str | int | float | bool) or v is None for v in values),
                    f"{where}.choice takes plain values (text, numbers, true/false), got {values!r}")
        step = raw.get("step")
        require(step is None or (kind != "choice" and is_number(step) and step > 0),
                f"{where}.step must be a positive number on an int or float range, got {step!r}")
        require(step is None or not raw.get("log"), f"{where}: give step or log, not both")
        require(isinstance(raw.get("log", False), bool), f"{where}.log must be true or false, got {raw.get('log')!r}")
        return cls(path, kind, tuple(values), step, bool(raw.get("log", False)))


@dataclass(frozen=True)
class SearchSpec:
    """An Optuna search: the space, the objectives, the trial budget and the sampler."""

    space: tuple[ParamRange, ...]
    objectives: dict[str, str]
    trials: int = 30
    sampler: str = "tpe"
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: Any, objectives: dict[str, str]) -> SearchSpec:
        require_mapping(raw, "search", "{space: {...}, objectives: {perplexity: min, size_bytes: min}, trials: 30}")
        check_keys(raw, SEARCH_KEYS, "search key")
        space = raw.get("space")
        require(isinstance(space, dict) and space, "search.space must map dotted paths to ranges, such as "
                                                   "{steps.0.quantize.bits: {int: [2, 8]}}")
        trials, sampler, seed = raw.get("trials", 30), raw.get("sampler", "tpe"), raw.get("seed", 0)
        require(is_count(trials, 1), f"search.trials must be a whole number >= 1, got {trials!r}")
        require(sampler in SAMPLERS, f"search.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        require(is_count(seed), f"search.seed must be a whole number >= 0, got {seed!r}")
        return cls(tuple(ParamRange.from_dict(_checked_path(p), r) for p, r in space.items()), objectives,
                   trials, sampler, seed)


@dataclass(frozen=True)
class Resources:
    """What one trial takes on a Ray cluster (and the torch threads it uses there)."""

    cpus: float = 1
    gpus: float = 0

    @classmethod
    def from_dict(cls, raw: Any) -> Resources:
        if raw is None:
            return cls()
        require_mapping(raw, "resources", "{cpus: 1, gpus: 0}")
        check_keys(raw, ("cpus", "gpus"), "resources key")
        cpus, gpus = raw.get("cpus", 1), raw.get("gpus", 0)
        require(is_number(cpus) and cpus >= 1, f"resources.cpus must be a number >= 1, got {cpus!r}")
        require(is_number(gpus) and gpus >= 0, f"resources.gpus must be a number >= 0, got {gpus!r}")
        return cls(cpus, gpus)


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file; ``base`` is the recipe mapping as written (trials are set into copies)."""

    name: str
    base: dict
    grid: tuple[dict[str, list], ...] = ()
    search: SearchSpec | None = None
    objectives: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OBJECTIVES))
    constraints: tuple[Constraint, ...] = ()
    resources: Resources = field(default_factory=Resources)
    raw: dict = field(default_factory=dict, compare=False, repr=False)  # the file's mapping, for the stored copy

    @property
    def kind(self) -> str:
        return "search" if self.search is not None else "grid"

    @property
    def base_recipe(self) -> Recipe:
        return Recipe.from_dict(self.base)

    def to_dict(self) -> dict:
        """The sweep file's mapping (what ``from_dict`` read)."""
        return dict(self.raw)

    @classmethod
    def from_dict(cls, data: Any) -> SweepSpec:
        """Validate a parsed sweep file; every refusal names the key and says what to write instead."""
        require_mapping(data, "a sweep file", "{sweep: NAME, base: {model: ...}, grid: {...}}")
        check_keys(data, KEYS, "sweep key")
        name = data.get("sweep")
        require(isinstance(name, str) and bool(_NAME.match(name)),
                f"`sweep:` must be a name of letters, digits, '.', '_' or '-' (at most 80), got {name!r}")
        base = data.get("base")
        require_mapping(base, "`base:`", "{model: sample:teacher, steps: [...]}")
        recipe = _checked_base(dict(base))
        require(("grid" in data) != ("search" in data), "a sweep needs exactly one of `grid:` (values to try) or "
                                                        "`search:` (an Optuna search); it has "
                                                        f"{'both' if 'grid' in data else 'neither'}")
        objectives = _objectives(data, recipe)
        search = SearchSpec.from_dict(data["search"], objectives) if "search" in data else None
        grid = _grid(data["grid"]) if "grid" in data else ()
        constraints = parse_constraints(data.get("constraint"))
        _check_measured([c.metric for c in constraints], recipe, "constraint")
        return cls(name, dict(base), grid, search, objectives, constraints, Resources.from_dict(data.get("resources")),
                   json.loads(json.dumps(data, default=str)))


def _checked_base(base: dict) -> Recipe:
    try:
        recipe = Recipe.from_dict(base)
    except SpecError as error:
        raise SpecError(f"`base:` is not a valid recipe: {error}") from error
    path = (recipe.export or {}).get("path")
    require(not path, f"`base:` exports to {path!r}: every trial would write that same folder. Leave `path` out "
                      "(each trial's export goes into its result's folder in the store) or export the best trial "
                      "afterwards with `squeezelab export RESULT_ID`.")
    return recipe


def _checked_path(path: Any) -> str:
    parts = split_path(path)
    require(parts[0] not in FIXED, f"a sweep cannot vary {path!r}: it fixes {FIXED.get(parts[0])} for every trial; "
                                   "set it in `base:` (a sweep over steps, calibration or export settings is fine)")
    return path


def _grid(raw: Any) -> tuple[dict[str, list], ...]:
    grids = raw if isinstance(raw, list) else [raw]
    require(bool(grids) and all(isinstance(g, dict) and g for g in grids),
            "`grid:` must map dotted paths to lists of values, such as {steps.0.quantize.bits: [2, 4, 8]}, or be "
            f"a list of such mappings (their union), got {raw!r}")
    out = []
    for grid in grids:
        for path, values in grid.items():
            _checked_path(path)
            require(isinstance(values, list) and bool(values),
                    f"grid.{path} must be a non-empty list of values, got {values!r}")
            keys = [json.dumps(v, sort_keys=True, default=str) for v in values]
            require(len(set(keys)) == len(keys), f"grid.{path} lists a value twice: {values!r}")
        out.append({str(path): list(values) for path, values in grid.items()})
    return tuple(out)


def _objectives(data: dict, recipe: Recipe) -> dict[str, str]:
    search = data.get("search")
    top, inner = data.get("objectives"), search.get("objectives") if isinstance(search, dict) else None
    require(top is None or inner is None, "objectives are given twice (top level and in search:); keep one")
    raw = top if top is not None else inner if inner is not None else DEFAULT_OBJECTIVES
    require(isinstance(raw, dict) and 1 <= len(raw) <= 4,
            f"objectives must map one to four metrics to min or max, such as {{perplexity: min, size_bytes: min}}, "
            f"got {raw!r}")
    for metric, sense in raw.items():
        require(metric in METRICS, f"unknown objective {metric!r}; metrics: {', '.join(METRICS)}")
        require(sense in ("min", "max"), f"objective {metric} must be min or max, got {sense!r}")
    _check_measured(list(raw), recipe, "objective")
    return {str(metric): str(sense) for metric, sense in raw.items()}


def _check_measured(metrics: list[str], recipe: Recipe, what: str) -> None:
    timed = [m for m in metrics if m in LATENCY_METRICS]
    require(not timed or recipe.evaluation.latency,
            f"{what} {', '.join(timed)} needs speed measured, but the base recipe has `evaluation: {{latency: false}}`;"
            " turn latency on or drop the " + what)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file (``.yaml`` / ``.yml`` / ``.json``)."""
    path = Path(path)
    require(path.is_file(), f"sweep file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise SpecError(f"sweep file {path} is not valid {kind}: {exc}") from exc
    return SweepSpec.from_dict(data)

