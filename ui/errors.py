"""Show what went wrong as a message the user can act on, never as a traceback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import streamlit as st

from core.errors import SqueezeLabError

log = logging.getLogger("squeezelab.ui")


def describe(error: BaseException) -> str:
    """A one-line message: the text of a SqueezeLabError as is, anything else with its type."""
    if isinstance(error, SqueezeLabError):
        return str(error)
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def shown(action: str) -> Iterator[None]:
    """Run the block; on an error show ``action: message`` with st.error and carry on after it.

    Streamlit's own control flow (st.stop, st.rerun) derives from BaseException and passes through.
    """
    try:
        yield
    except SqueezeLabError as error:
        st.error(f"{action}: {error}")
    except Exception as error:  # a bug or a library failure: the message here, the traceback in the log
        log.exception("%s failed", action)
        st.error(f"{action} failed unexpectedly: {describe(error)}. The server log has the details.")
