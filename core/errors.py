"""Exceptions a user can act on.

Every `SqueezeLabError` carries a message that says what was given, why it cannot work and what
to do instead. The CLI maps them to exit code 2 (bad input) and prints only the message; any
other exception is an internal error (exit code 1).
"""

from __future__ import annotations


class SqueezeLabError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ModelNotFoundError(SqueezeLabError):
    """A model reference names nothing that exists (path, sample name or Hub id)."""


class HubUnreachableError(SqueezeLabError):
    """The Hugging Face Hub cannot be reached and the model is not in the local cache."""


class NotACausalLMError(SqueezeLabError):
    """The model exists but is not a causal (decoder-only) language model."""


class UnsafeModelError(SqueezeLabError):
    """Loading would run remote code or unpickle weights, and the caller did not opt in."""


class InsufficientMemoryError(SqueezeLabError):
    """The weights would not fit in the memory that is free on the chosen device."""


class DeviceError(SqueezeLabError):
    """A device or dtype was asked for that this machine cannot provide."""


class TextSourceError(SqueezeLabError):
    """A text source is missing, unreadable, in an unknown format or too short."""


class SpecError(SqueezeLabError, ValueError):
    """A spec or recipe has a value outside what is allowed (also a ``ValueError``, which it is)."""


class CancelledError(SqueezeLabError):
    """Long work was stopped on request; whatever is marked as kept was kept."""


class ExportError(SqueezeLabError):
    """An export cannot be written where asked (unwritable, full or occupied path); nothing was left there."""


class UnreadableFileError(SqueezeLabError):
    """A file exists but is not what it should be: empty, truncated, garbled, binary or in another encoding."""


class ModelFileError(UnreadableFileError):
    """A model's config, weights, tokenizer or GGUF file cannot be read, or its parts disagree."""


class ResultStoreError(SqueezeLabError):
    """The results folder or database cannot be used: a file in the way, no permission, no space, or damage.

    The message names the path and a way out; SqueezeLab never deletes or rewrites a damaged database."""
