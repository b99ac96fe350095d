"""The peers' own virtual environments (one per peer, under ``$SQUEEZELAB_BENCH_VENVS``, default
``~/.cache/squeezelab/bench-venvs``): where each lives, and the marker file that records the pins it was built
with, so that a venv built with the same pins is reused and one built with others is rebuilt."""

from __future__ import annotations

import json
import os
from pathlib import Path

MARKER = "squeezelab-peer.json"


def venv_dir(peer: str) -> Path:
    root = os.environ.get("SQUEEZELAB_BENCH_VENVS") or "~/.cache/squeezelab/bench-venvs"
    return Path(root).expanduser() / peer


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_built(path: Path, pins: dict[str, str]) -> bool:
    """True when ``path`` holds a finished venv built with exactly ``pins``."""
    marker = read_marker(path)
    return bool(marker and marker.get("pins") == pins and venv_python(path).exists())


def write_marker(path: Path, pins: dict[str, str], versions: dict[str, str]) -> None:
    """Written last, after a successful install: a half-built venv has no marker and is rebuilt."""
    (path / MARKER).write_text(json.dumps({"pins": pins, "versions": versions}, indent=2) + "\n")
