"""`mainsail up` as a user runs it, for the end-to-end tier: start, yield the endpoints, and on
the way out check that SIGTERM ends it cleanly and leaves no process behind.

Tests that kill a worker find it with `worker_pid`: the process listening on the address the
stack's own router lists, checked to descend from the `mainsail up` this fixture started —
never by process name, which would hit every other stack on the machine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from mainsail.cli.local.child import UpProcess

STARTUP_TIMEOUT = 600  # `mainsail up` (Ray, torch) took > 300 s at load average 35 beside a node


@contextmanager
def running_stack(workdir: Path, args: list[str]) -> Iterator[dict[str, Any]]:
    """`mainsail up <args>` in ``workdir``; its endpoints (as `--ready-file` writes them)."""
    up = UpProcess(workdir, args)
    try:
        endpoints = up.start(STARTUP_TIMEOUT)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    assert up.proc is not None
    yield {**endpoints, "up_pid": up.proc.pid}
    code, leftovers = up.stop(60)
    assert code == 0, f"mainsail up exited {code} after SIGTERM:\n{up.log_tail()}"
    assert not leftovers, f"processes left behind after SIGTERM: {leftovers}"


def admin(stack: dict[str, Any]) -> dict[str, str]:
    """The header that opens this stack's admin API (the run's token, from its ready file)."""
    return {"Authorization": f"Bearer {stack['admin_token']}"}


def worker_pid(stack: dict[str, Any], worker_id: str) -> int:
    """The pid of worker ``worker_id`` of this stack (it serves on the address the stack's
    router lists for it, and descends from the stack's `mainsail up`)."""
    workers = httpx.get(stack["http"] + "/workers", headers=admin(stack), timeout=10).json()["data"]
    address = next(w["address"] for w in workers if w["id"] == worker_id)
    port = int(address.rsplit(":", 1)[1])
    ours = {p.pid for p in psutil.Process(stack["up_pid"]).children(recursive=True)}
    pids = {
        c.pid
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and getattr(c.laddr, "port", None) == port and c.pid
    }
    mine = pids & ours
    assert len(mine) == 1, f"worker {worker_id} at {address}: listeners {pids}, ours {mine}"
    return mine.pop()


def worker_pids(stack: dict[str, Any]) -> dict[str, int]:
    """Every registered worker of this stack by id, with its pid (see `worker_pid`)."""
    workers = httpx.get(stack["http"] + "/workers", headers=admin(stack), timeout=10).json()["data"]
    return {w["id"]: worker_pid(stack, w["id"]) for w in workers}
