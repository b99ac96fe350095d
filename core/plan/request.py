"""What an atlas is asked for, and the atlas for it: from the cache when it is there, else built and cached.

The calibration windows are those a run with the same ``calibration:`` section uses (``samples`` random
windows of ``seqlen`` tokens, seeded); ``heldout`` more windows drawn after them from the same generator
are kept out of the statistics and score the measured costs and the uniform choices (their first
``heldout_tokens`` tokens: a measured cell costs in proportion to them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core import data
from core.calibration.spec import CalibrationSpec
from core.plan.atlas import Atlas
from core.plan.build import build_atlas
from core.plan.cache import atlas_key, load_atlas, save_atlas, weights_fingerprint
from core.plan.menu import DEFAULT_HELDOUT, Menu
from core.progress import CancelFn, ProgressFn, report


@dataclass(frozen=True)
class AtlasRequest:
    """An atlas of one model for one menu: how its costs are found and on which text."""

    model: str  # the model reference (part of the cache key, with the weights' fingerprint)
    menu: Menu
    mode: str = "proxy"  # proxy | measured
    calibration: CalibrationSpec = CalibrationSpec()
    heldout: int = DEFAULT_HELDOUT
    heldout_tokens: int | None = None  # None: whole windows of the calibration seqlen
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()

    def settings(self, model: nn.Module, bos: int | None = None) -> dict:
        """What the atlas depends on besides the model and the menu (its cache key's settings); ``bos``: the
        BOS id the windows start with (a tokenizer that adds one), absent from keys of tokenizers that add none."""
        c = self.calibration
        settings = {"text": c.text, "samples": c.samples, "seqlen": c.seqlen, "seed": c.seed,
                    "heldout": self.heldout, "heldout_tokens": self.heldout_tokens,
                    "include": list(self.include), "exclude": list(self.exclude),
                    "dtype": str(next(model.parameters()).dtype)}
        return settings if bos is None else {**settings, "bos": bos}


def windows_for(request: AtlasRequest, tokenizer, default_text: str, context_length: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration windows [samples, seqlen], held-out windows [heldout, seqlen]) of the request's text; each
    starts with the tokenizer's BOS when it adds one, as a run's calibration windows do."""
    spec = request.calibration
    seqlen = min(spec.seqlen, context_length) if context_length else spec.seqlen
    ids = data.tokenize(tokenizer, data.load_text(spec.text, default=default_text).text)
    windows = data.calibration_batches(ids, spec.samples + request.heldout, seqlen, spec.seed,
                                       bos=data.added_bos(tokenizer))
    return windows[: spec.samples], windows[spec.samples :, : request.heldout_tokens]


def _key(model: nn.Module, tokenizer, request: AtlasRequest) -> str:
    settings = request.settings(model, data.added_bos(tokenizer))
    return atlas_key(request.model, weights_fingerprint(model), settings, request.menu.key())


def cached_atlas(model: nn.Module, tokenizer, request: AtlasRequest,
                 cache_root: str | Path | None) -> Atlas | None:
    """The cached atlas that answers ``request`` for ``model`` and its tokenizer (a measured one answers proxy
    requests too), or None."""
    if cache_root is None:
        return None
    key = _key(model, tokenizer, request)
    atlas = load_atlas(cache_root, key)
    return atlas if atlas is not None and (request.mode == "proxy" or atlas.measured) else None


def atlas_for(model: nn.Module, tokenizer, default_text: str, request: AtlasRequest,
              cache_root: str | Path | None = None, context_length: int | None = None,
              on_progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> Atlas:
    """The atlas for ``request``: cached under ``cache_root`` (a results folder), else built and cached there."""
    key = _key(model, tokenizer, request)
    found = load_atlas(cache_root, key) if cache_root is not None else None
    if found is not None and (request.mode == "proxy" or found.measured):
        report(on_progress, "atlas: cached", 1.0)
        return found
    started = time.perf_counter()
    report(on_progress, "atlas: calibration windows", 0.0)
    calibration, heldout = windows_for(request, tokenizer, default_text, context_length)
    atlas = build_atlas(model, request.model, request.menu, calibration, heldout, request.mode == "measured",
                        request.include, request.exclude, on_progress, cancel)
    atlas.key = key
    atlas.settings.update(request.settings(model, data.added_bos(tokenizer)))
    atlas.timings["total_s"] = time.perf_counter() - started
    if cache_root is not None:
        save_atlas(cache_root, atlas)
    return atlas
