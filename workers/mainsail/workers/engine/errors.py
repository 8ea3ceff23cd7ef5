"""Errors the engine raises to its callers."""

from __future__ import annotations


class EngineInputError(ValueError):
    """A request the engine refuses (bad prompt, limits, sampling); the message says why.

    Raised before any output is produced; other requests are unaffected.
    """
