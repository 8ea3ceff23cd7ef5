"""The rank actors of a `mainsail up` stack's sharded workers, as that stack's Ray reports them.

Tests that kill one rank of a sharded worker (issue 13: it must fail over like a dead worker)
need the rank's pid. They ask Ray, not the process table: this process joins the stack's own
Ray (`ray_address` and `ray_namespace` from its ready file) as a driver, looks the worker actor
up by its name (the worker id) and asks it (`WorkerActor.rank_pids`), which asks each rank
actor through Ray. A pid is also checked to descend from the stack's `mainsail up` before
anyone may kill it, so no other stack on the machine is ever touched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from mainsail.cli.local.ray_start import RAY_ENV_DEFAULTS

ASK_TIMEOUT_S = 60.0


@contextmanager
def joined_ray(stack: dict[str, Any]) -> Iterator[None]:
    """This process as a driver of the stack's Ray; leaves it again before the stack stops
    (a driver whose Ray goes away first would end this process)."""
    import ray

    for key, value in RAY_ENV_DEFAULTS.items():  # as the stack's Ray was started
        os.environ.setdefault(key, value)
    ray.init(
        address=stack["ray_address"],
        namespace=stack["ray_namespace"],
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def rank_pids(stack: dict[str, Any], worker_id: str) -> dict[str, list[int]]:
    """``{"ranks": [pid of rank 0, 1, ...], "spares": [...]}`` of worker ``worker_id`` (inside
    `joined_ray`); every pid checked to belong to this stack."""
    import ray

    actor = ray.get_actor(worker_id)
    reply: Any = ray.get(actor.rank_pids.remote(), timeout=ASK_TIMEOUT_S)
    pids: dict[str, list[int]] = dict(reply)
    ours = {p.pid for p in psutil.Process(stack["up_pid"]).children(recursive=True)}
    strangers = {pid for group in pids.values() for pid in group} - ours
    assert not strangers, f"{worker_id} reports ranks {pids}; not of this stack: {strangers}"
    return pids


def wait_rank_pids(
    stack: dict[str, Any], worker_id: str, ranks: int, timeout: float
) -> dict[str, list[int]]:
    """`rank_pids` once worker ``worker_id`` (a replacement, say) runs ``ranks`` ranks; a
    worker still loading its model reports none, and its actor may not exist yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pids = rank_pids(stack, worker_id)
        except ValueError:  # no actor of that name (yet)
            pids = {"ranks": [], "spares": []}
        if len(pids["ranks"]) == ranks:
            return pids
        if time.monotonic() > deadline:
            raise AssertionError(f"{worker_id}: {pids}, not {ranks} ranks, after {timeout} s")
        time.sleep(1)
