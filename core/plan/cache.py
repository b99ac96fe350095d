"""Atlases kept beside the results: ``<results root>/plans/atlas-<key>.json``, one file per key.

The key is a hash of what decides the numbers: the model reference and a fingerprint of its weights
(so a folder whose weights changed is not mistaken for the old one), its dtype, the calibration text,
windows and seed, the held-out windows, the menu and the layers selected. A measured atlas also holds
the proxy costs, so it answers proxy requests too. Files are written to a temporary name and renamed,
so a reader never sees half of one; a file that cannot be read is ignored (and rebuilt).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.plan.atlas import FORMAT_VERSION, Atlas

FOLDER = "plans"
SAMPLED_VALUES = 4096  # values per tensor read into the fingerprint


def weights_fingerprint(model: nn.Module) -> str:
    """A hash of every tensor's name, shape, dtype and an evenly strided sample of its values."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLED_VALUES)].cpu().contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes() if sample.numel() else b"")
    return digest.hexdigest()[:16]


def atlas_key(model_ref: str, fingerprint: str, settings: dict[str, Any], menu_key: str) -> str:
    """The cache key: a hash of the model, its weights, the calibration settings and the menu."""
    text = json.dumps({"model": model_ref, "weights": fingerprint, "settings": settings, "menu": menu_key,
                       "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def cache_folder(root: str | Path) -> Path:
    return Path(root).expanduser() / FOLDER


def load_atlas(root: str | Path, key: str) -> Atlas | None:
    """The cached atlas of ``key`` under results root ``root``, or None."""
    path = cache_folder(root) / f"atlas-{key}.json"
    try:
        return Atlas.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_atlas(root: str | Path, atlas: Atlas) -> Path:
    """Write ``atlas`` (with its key set) atomically; returns the file."""
    folder = cache_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"atlas-{atlas.key}.json"
    scratch = folder / f".atlas-{atlas.key}.{os.getpid()}-{secrets.token_hex(3)}.tmp"
    try:
        scratch.write_text(json.dumps(atlas.to_dict()))
        os.replace(scratch, path)
    finally:
        scratch.unlink(missing_ok=True)
    return path


def list_atlases(root: str | Path) -> list[Atlas]:
    """Every readable cached atlas under ``root``, newest file first."""
    folder = cache_folder(root)
    files = sorted(folder.glob("atlas-*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() \
        else []
    atlases = [load_atlas(root, path.stem.removeprefix("atlas-")) for path in files]
    return [atlas for atlas in atlases if atlas is not None]
