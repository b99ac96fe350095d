"""Dotted paths into a recipe mapping: ``steps.0.quantize.bits`` is ``recipe["steps"][0]["quantize"]["bits"]``.

A sweep names what it varies by such paths. Every part but the last must exist in the mapping (so a
typo is refused with the paths that do exist); the last may be a key the mapping does not have yet
(``steps.0.quantize.group_size`` on a step that leaves it at its default), which the recipe's own
validation then accepts or refuses by name.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from core.checks import require


def split_path(path: str) -> list[str]:
    """The parts of a dotted path; an empty part (``steps..bits``) is refused."""
    require(isinstance(path, str) and path.strip() != "",
            f"a sweep path must be dotted text such as steps.0.quantize.bits, got {path!r}")
    parts = path.split(".")
    require(all(part.strip() for part in parts),
            f"sweep path {path!r} has an empty part; write e.g. steps.0.prune.sparsity")
    return parts


def leaf_paths(data: Any, prefix: str = "") -> list[str]:
    """Every dotted path to a value that is not itself a mapping or list, in the mapping's order."""
    if isinstance(data, Mapping):
        items = [(str(key), value) for key, value in data.items()]
    elif isinstance(data, list):
        items = [(str(index), value) for index, value in enumerate(data)]
    else:
        return [prefix] if prefix else []
    paths: list[str] = []
    for key, value in items:
        child = f"{prefix}.{key}" if prefix else key
        paths.extend(leaf_paths(value, child) if isinstance(value, Mapping | list) and value else [child])
    return paths


def _child(container: Any, part: str, path: str, root: Mapping) -> Any:
    """``container[part]`` (a key of a mapping, an index of a list) or a refusal naming the paths that exist."""
    if isinstance(container, Mapping) and part in container:
        return container[part]
    if isinstance(container, list) and part.isdigit() and int(part) < len(container):
        return container[int(part)]
    _refuse(path, root)


def _refuse(path: str, root: Mapping) -> None:
    existing = ", ".join(leaf_paths(root)) or "(none)"
    require(False, f"sweep path {path!r} does not lead anywhere in the base recipe; paths that exist: {existing}. "
                   "Only the last part may be a key the recipe does not have yet: write the section or step in "
                   "`base:` (e.g. `calibration: {}`) to vary a key under it.")


def get_path(data: Mapping, path: str) -> Any:
    """The value at ``path``; refused (with the existing paths) when any part is missing."""
    node: Any = data
    for part in split_path(path):
        node = _child(node, part, path, data)
    return node


def set_path(data: Mapping, path: str, value: Any) -> dict:
    """A deep copy of ``data`` with ``value`` at ``path`` (``data`` itself is not changed)."""
    out = copy.deepcopy(dict(data))
    *parents, last = split_path(path)
    node: Any = out
    for part in parents:
        node = _child(node, part, path, data)
    if isinstance(node, dict):
        node[last] = copy.deepcopy(value)
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = copy.deepcopy(value)
    else:
        _refuse(path, data)
    return out


def apply_params(base: Mapping, params: Mapping[str, Any]) -> dict:
    """``base`` with every ``path: value`` of ``params`` set, in order (a later path may go inside an earlier value)."""
    out = copy.deepcopy(dict(base))
    for path, value in params.items():
        out = set_path(out, path, value)
    return out
