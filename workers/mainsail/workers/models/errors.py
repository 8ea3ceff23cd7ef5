"""Errors raised while reading a checkpoint."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory is unusable; the message names the file or tensor at fault."""
