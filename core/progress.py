"""How long work reports progress and is asked to stop.

Every long-running function takes an optional ``on_progress(stage, fraction)`` and ``cancel()``;
the CLI prints the first, the app's job panel draws it, and Cancel sets the second.
"""

from __future__ import annotations

from collections.abc import Callable

from core.errors import CancelledError

ProgressFn = Callable[[str, float], None]  # (stage name, fraction done in [0, 1])
CancelFn = Callable[[], bool]  # returns True when the caller wants the work stopped


def report(on_progress: ProgressFn | None, stage: str, fraction: float) -> None:
    """Call ``on_progress`` if there is one, with ``fraction`` clipped to [0, 1]."""
    if on_progress is not None:
        on_progress(stage, min(1.0, max(0.0, fraction)))


def check_cancel(cancel: CancelFn | None, message: str) -> None:
    """Raise ``CancelledError(message)`` when the caller asked to stop."""
    if cancel is not None and cancel():
        raise CancelledError(message)
