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
