"""``torch.compile`` for a decode step: inductor's CPU backend, compiled once, eager if it cannot compile.

A batch-1 decode step is hundreds of small ops; on a CPU, inductor fuses the elementwise ones into
a few C++ loops, and its C++ wrapper calls the graph's kernels without going back to Python between
them. Freezing treats the weights as constants, so inductor can fold and prepack them. The first
call traces and compiles (tens of seconds for a 30-layer model on two cores); ``CompiledStep``
times that call apart (``compile_s``) and, when compiling fails on this machine, runs the eager
step from then on and says why (``failure``) instead of failing the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CompileSettings:
    """How a decode step is compiled (inductor options; see the module docstring)."""

    mode: str | None = None  # a torch.compile mode; "max-autotune-no-cudagraphs" also tries C++ GEMM templates
    freezing: bool = False  # weights as constants (folded, prepacked; a second copy of dense weights in memory)
    cpp_wrapper: bool = False  # call the compiled kernels from C++ instead of Python

    @property
    def label(self) -> str:
        parts = [self.mode or "default"] + [name for name in ("freezing", "cpp_wrapper") if getattr(self, name)]
        return "inductor " + ", ".join(parts)


DEFAULT_SETTINGS = CompileSettings()


def compiler_unavailable() -> str | None:
    """Why torch.compile cannot run here at all (None: it can)."""
    try:
        import torch._inductor  # noqa: F401 - needs a C++ compiler at run time, checked on the first call
    except ImportError as exc:  # a torch build without inductor
        return f"torch.compile is unavailable ({exc})"
    if not hasattr(torch, "compile"):
        return "this torch has no torch.compile"
    return None


class CompiledStep:
    """``step(*args)`` compiled on its first call; eager (with ``failure`` set) when compiling fails."""

    def __init__(self, eager: Callable[..., torch.Tensor], settings: CompileSettings = DEFAULT_SETTINGS) -> None:
        self.eager, self.settings = eager, settings
        options = {"freezing": settings.freezing, "cpp_wrapper": settings.cpp_wrapper}
        self._compiled = torch.compile(eager, fullgraph=True, dynamic=False, mode=settings.mode, options=options)
        self.compile_s = 0.0  # wall time of the call that traced and compiled
        self.failure: str | None = None
        self._ready = False

    @property
    def compiled(self) -> bool:
        return self._ready and self.failure is None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.failure is not None:
            return self.eager(*args)
        if self._ready:
            return self._compiled(*args)
        started = time.perf_counter()
        try:
            out = self._compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager step still measures the model
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            self.failure = f"torch.compile failed on this machine ({type(exc).__name__}: {first_line}); ran eager"
            return self.eager(*args)
        self.compile_s = time.perf_counter() - started
        self._ready = True
        return out
