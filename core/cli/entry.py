"""``main``: parse, run the command, and map what went wrong to an exit code.

Exit codes: 0 success, 2 bad input (the message on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import sys

from core.cli.commands import COMMANDS
from core.cli.parser import EXIT_BAD_INPUT, EXIT_INTERNAL, build_parser
from core.errors import SqueezeLabError


def _quiet_libraries() -> None:
    """Our own progress lines replace the libraries' progress bars and advisory warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``squeezelab`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return COMMANDS[args.command](args)
    except SqueezeLabError as exc:
        print(f"squeezelab: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("squeezelab: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: keep the traceback for a bug report
        import traceback

        traceback.print_exc()
        print(f"squeezelab: internal error ({type(exc).__name__}); please report it with the traceback above",
              file=sys.stderr)
        return EXIT_INTERNAL
