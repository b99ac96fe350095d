"""Checks every step spec shares: a condition with a message, and a recipe mapping against a dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from core.errors import SpecError


def require(condition: bool, message: str) -> None:
    """Raise ``SpecError(message)`` unless ``condition`` holds."""
    if not condition:
        raise SpecError(message)


def checked_params(spec_type: type, params: Any, kind: str) -> dict[str, Any]:
    """``params`` as a dict, after refusing a non-mapping or any key that is not a field of ``spec_type``."""
    require(isinstance(params, Mapping), f"{kind} parameters must be a mapping, got {params!r}")
    allowed = [f.name for f in fields(spec_type)]
    unknown = sorted(set(params) - set(allowed), key=str)
    require(not unknown, f"unknown {kind} parameter(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")
    return dict(params)
