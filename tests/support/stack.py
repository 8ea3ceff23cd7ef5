"""`mainsail up` as a user runs it, for the end-to-end tier: start, yield the endpoints, and on
the way out check that SIGTERM ends it cleanly and leaves no process behind."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from mainsail.cli.local.child import UpProcess

STARTUP_TIMEOUT = 300


@contextmanager
def running_stack(workdir: Path, args: list[str]) -> Iterator[dict[str, Any]]:
    """`mainsail up <args>` in ``workdir``; its endpoints (as `--ready-file` writes them)."""
    up = UpProcess(workdir, args)
    try:
        endpoints = up.start(STARTUP_TIMEOUT)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield endpoints
    code, leftovers = up.stop(60)
    assert code == 0, f"mainsail up exited {code} after SIGTERM:\n{up.log_tail()}"
    assert not leftovers, f"processes left behind after SIGTERM: {leftovers}"
