"""Errors a person can read: every failure the engines expect is one of these."""

from __future__ import annotations


class StudioError(Exception):
    """A failure with a message meant for the person at the keyboard (no traceback needed)."""


class RequestError(StudioError, ValueError):
    """A request with a value out of range or inconsistent with another value."""


class ModelError(StudioError):
    """A model file or folder that cannot be loaded; the message names the file and the problem."""


class ReferencesError(StudioError):
    """A reference image folder the patch engine cannot use."""


class ImageError(StudioError):
    """An image file that cannot be read safely."""


def describe_error(exc: BaseException) -> str:
    """A message a person can act on, for any exception a run raised."""
    if isinstance(exc, StudioError):
        return str(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if is_out_of_memory(exc):
        detail = f" ({text})" if text else ""
        return (
            f"Out of memory while generating{detail}. Try a smaller size, fewer steps or fewer "
            "references, or close other programs using the GPU; the memory has been freed and you can "
            "generate again."
        )
    return f"Generation failed: {type(exc).__name__}: {text or 'no details'} (the full error is in the log)"


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's OutOfMemoryError (CUDA, MPS) and Python's MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
