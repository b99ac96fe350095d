"""The Recipe: a model reference, compression steps in order, and how to calibrate, evaluate and export.

A recipe file (YAML or JSON) looks like::

    model: sample:teacher
    steps: []                       # prune / quantize / distill steps, applied in order
    calibration: {text: default, samples: 128, seqlen: 512, seed: 0}
    evaluation: {text: default, seqlen: 512, max_windows: 64}
    export: {format: hf, path: out/model}   # optional: hf | compressed-tensors | gguf (core.export.spec)
    allow_pickle: false             # opt in to weights stored only as pickle (unpickling can run code)
    trust_remote_code: false        # opt in to a model that needs its repository's own Python code

Every key but ``model`` has a default. Validation happens in ``__post_init__`` so a bad value is
refused, with what was given and what is allowed, before any work starts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from core.calibration.spec import CalibrationSpec
from core.checks import check_keys, require, require_bool, require_mapping
from core.data import decode_text
from core.errors import SpecError, TextSourceError
from core.evaluate.spec import EvalSpec
from core.export.spec import ExportSpec
from core.recipe.steps import parse_step

OPT_INS = ("allow_pickle", "trust_remote_code")  # loading choices that can run code; off by default


@dataclass(frozen=True)
class Step:
    """One compression step: its kind, its parameters as written, and the validated step object."""

    kind: str
    params: dict = field(default_factory=dict)
    parsed: Any = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
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
    # Opt-ins, off unless the recipe says so; a run records them, so rerunning its recipe repeats the choice.
    allow_pickle: bool = False  # load weights stored only as pickle (pytorch_model.bin): unpickling can run code
    trust_remote_code: bool = False  # load a model that needs its repository's own Python code, and run it

    def __post_init__(self) -> None:
        require(isinstance(self.model, str) and bool(self.model.strip()),
                "a recipe needs `model:` - a sample (sample:teacher), a folder, a .gguf file or a Hub id")
        for name in OPT_INS:
            require_bool(getattr(self, name), name)
        if self.export is not None:
            ExportSpec.from_dict(self.export)  # refused here, with what is allowed, before anything runs

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the recipe-file layout (round-trips through ``from_dict``)."""
        data = asdict(self)
        data["steps"] = [{step.kind: dict(step.params)} for step in self.steps]  # as written, not as parsed
        # an opt-in left off is not written: recipes without one read as before
        return {key: value for key, value in data.items() if value is not None and not (key in OPT_INS and not value)}

    @property
    def load_options(self) -> dict[str, bool]:
        """The opt-ins as keyword arguments of ``core.models.load`` (for the model and any teacher or student)."""
        return {name: getattr(self, name) for name in OPT_INS}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build a recipe from parsed YAML/JSON; unknown keys are refused by name."""
        require(isinstance(data, dict), f"a recipe must be a mapping of keys to values, got {type(data).__name__}")
        check_keys(data, [f.name for f in fields(cls)], "recipe key")
        return cls(
            model=data.get("model", ""),
            steps=tuple(_parse_step(raw) for raw in data.get("steps") or ()),
            calibration=_section(CalibrationSpec, data.get("calibration"), "calibration"),
            evaluation=_section(EvalSpec, data.get("evaluation"), "evaluation"),
            export=data.get("export"),
            device=data.get("device"),
            dtype=data.get("dtype"),
            allow_pickle=data.get("allow_pickle", False),
            trust_remote_code=data.get("trust_remote_code", False),
        )


def _parse_step(raw: Any) -> Step:
    require(isinstance(raw, dict) and len(raw) == 1,
            f"each step is a one-key mapping such as {{prune: {{method: wanda}}}}, got {raw!r}")
    (kind, params), = raw.items()
    require(params is None or isinstance(params, dict),
            f"the parameters of step {kind!r} must be a mapping such as {{method: wanda, sparsity: 0.5}}, "
            f"got {params!r}")
    return Step(kind, dict(params or {}))


def _section(spec_type: type, raw: Any, name: str):
    if raw is None:
        return spec_type()
    require_mapping(raw, f"`{name}:`", "{key: value, ...}")
    check_keys(raw, [f.name for f in fields(spec_type)], "key", f"`{name}:`")
    try:
        return spec_type(**raw)
    except TypeError as exc:
        raise SpecError(f"`{name}:` {exc}") from exc


def load_recipe(path: str | Path) -> Recipe:
    """Read a recipe from a ``.yaml``/``.yml`` or ``.json`` file; every refusal names the file."""
    path = Path(path)
    require(not path.is_dir(), f"recipe file {str(path)!r} is a folder; give the path of a .yaml or .json file")
    require(path.is_file(), f"recipe file {str(path)!r} does not exist")
    try:
        text = decode_text(path.read_bytes(), str(path))  # UTF-8 only; other encodings: how to convert
    except OSError as exc:
        raise SpecError(f"cannot read recipe file {str(path)!r} ({exc.strerror or exc})") from exc
    except TextSourceError as exc:
        raise SpecError(f"recipe {exc}") from exc
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise SpecError(f"recipe {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
    require(data is not None, f"recipe {path} is empty; a recipe is a mapping of keys to values and needs at least "
                              "`model:` (e.g. model: sample:teacher)")
    require(isinstance(data, dict), f"recipe {path} must be a mapping of keys to values (model: ..., steps: [...]), "
                                    f"got {type(data).__name__}")
    steps = data.get("steps")
    require(steps is None or isinstance(steps, list),
            f"recipe {path}: `steps:` must be a list such as [{{prune: {{method: wanda}}}}], got {steps!r}")
    try:
        return Recipe.from_dict(data)
    except SpecError as exc:
        raise SpecError(f"recipe {path}: {exc}") from exc
