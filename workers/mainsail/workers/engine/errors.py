"""Errors the engine raises to its callers."""

from __future__ import annotations


class EngineInputError(ValueError):
    """A request the engine refuses (bad prompt, limits, sampling); the message says why.

    Raised before any output is produced; other requests are unaffected.
    """


class EngineFatalError(RuntimeError):
    """The engine cannot run another step (e.g. a rank of a sharded model died).

    Unlike a failed step, this ends the worker: its host stops so that the router treats it
    as a dead worker and moves its requests elsewhere.
    """
