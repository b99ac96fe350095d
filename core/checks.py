"""The one set of validators every spec uses, so the same mistake reads the same everywhere.

A spec validates itself in ``__post_init__`` with these; each failure is a ``SpecError`` whose
message says what was given, why it cannot work and what to give instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from core.errors import SpecError


def require(condition: bool, message: str) -> None:
    """Raise ``SpecError(message)`` unless ``condition`` holds."""
    if not condition:
        raise SpecError(message)


def is_count(value: Any, minimum: int = 0) -> bool:
    """A whole number (not a bool, which Python counts as an int) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require_mapping(value: Any, what: str, example: str) -> Mapping:
    """``value`` if it is a mapping; else the refusal ``<what> must be a mapping such as <example>``."""
    require(isinstance(value, Mapping), f"{what} must be a mapping such as {example}, got {value!r}")
    return value


def check_keys(params: Mapping, allowed: Iterable[str], noun: str, where: str = "") -> None:
    """Refuse keys of ``params`` outside ``allowed``, naming them and every allowed one.

    The message is always ``unknown <noun>(s) <names>[ in <where>]; allowed: <names>``, e.g.
    "unknown prune parameter(s) sparsty; allowed: method, sparsity, ...".
    """
    allowed = list(allowed)
    unknown = sorted(set(params) - set(allowed), key=str)
    place = f" in {where}" if where else ""
    require(not unknown, f"unknown {noun}(s) {', '.join(map(str, unknown))}{place}; allowed: {', '.join(allowed)}")


def checked_params(spec_type: type, params: Any, kind: str) -> dict[str, Any]:
    """A step's ``params`` as a dict, after refusing a non-mapping or a key that is not a field of ``spec_type``."""
    from dataclasses import fields

    require_mapping(params, f"{kind} parameters", "{method: ...}")
    check_keys(params, [f.name for f in fields(spec_type)], f"{kind} parameter")
    return dict(params)


def name_patterns(value: Any, name: str) -> tuple[str, ...]:
    """Shell patterns over layer names (one text or a list of them) as a tuple; refused otherwise."""
    items = (value,) if isinstance(value, str) else value
    require(isinstance(items, list | tuple) and all(isinstance(p, str) and p for p in items),
            f"{name} must be a list of shell patterns over layer names (such as '*mlp*'), got {value!r}")
    return tuple(items)


def require_bool(value: Any, name: str) -> None:
    """Refuse anything but true / false."""
    require(isinstance(value, bool), f"{name} must be true or false, got {value!r}")
