"""Starting a local Ray: one way for `mainsail up`, the tests and the benchmarks.

Why one: a local Ray start on a loaded two-core machine fails in ways each caller used to
meet on its own: Ray's fixed 30 s wait for its raylet runs out (started again), a start
that never finished leaves its GCS, raylet and monitors running (stopped by pid before the
next attempt, 5f35b40), the dashboard process Ray starts even without the UI misses its
60 s start-up wait. `start_local_ray` handles all of them; callers choose only what differs
(CPUs, custom resources, namespace, loopback binding, how many attempts, where progress goes).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping

import psutil

Progress = Callable[[str], None]

RAY_START_ATTEMPTS = 3
"""Local Ray starts tried before giving up: Ray waits a fixed 30 s for its raylet to register
and fails the start on a machine busy enough to exceed it (seen on 2 cores under load).

Why retry rather than start Ray some other way: the 30 s is a constant inside
`ray._private.node.Node` (``raylet_start_wait_time_s``, no setting or environment variable),
and `ray start --head` builds the same `Node`, so starting the head with the CLI in a process
group of our own would meet the same bound. Starting again, after stopping what the failed
start left (`init_ray_retrying`), is the one lever short of patching Ray."""

RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    # Ray waits 60 s for its dashboard process (started even without the UI, read when `ray`
    # is imported); on a loaded machine that start alone took longer and ray.init failed
    # outright ("Failed to start the dashboard").
    "RAY_DASHBOARD_STARTUP_TIMEOUT_S": "300",
}
"""Environment defaults for a local Ray (a value the user set is kept)."""


def start_local_ray(
    num_cpus: int,
    *,
    resources: Mapping[str, float] | None = None,
    namespace: str | None = None,
    node_ip_address: str | None = None,
    attempts: int = RAY_START_ATTEMPTS,
    progress: Progress = lambda _: None,
) -> None:
    """Start Ray in this process with ``num_cpus`` logical CPUs and the custom ``resources``,
    no dashboard and no worker logs copied to this process; ``node_ip_address`` "127.0.0.1"
    keeps it on loopback (tests, benchmarks). Started again, up to ``attempts`` starts, when
    only Ray's own start-up wait ran out (`init_ray_retrying`); ``progress`` hears why.

    Ray installs its own SIGTERM handler here; a caller with its own shutdown order restores
    its handler after (see `LocalStack`)."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import ray

    init_ray_retrying(
        lambda: ray.init(
            num_cpus=num_cpus,
            resources=dict(resources) if resources is not None else None,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            namespace=namespace,
            _node_ip_address=node_ip_address,  # None: Ray's own choice
        ),
        ray.shutdown,
        progress,
        attempts=attempts,
    )


def init_ray_retrying(
    init: Callable[[], object],
    shutdown: Callable[[], None],
    progress: Progress,
    attempts: int = RAY_START_ATTEMPTS,
) -> None:
    """Start local Ray, starting it again when only Ray's own start-up wait ran out; any other
    error is raised at once. A failed start is cleaned up before the next one (and before the
    last failure is raised): `shutdown` alone does not stop what a start that never finished
    launched (its GCS, raylet and monitors stay up, so every retry added load to a machine that
    was already too slow), so the processes this process gained during the attempt are stopped
    by their own ids."""
    for attempt in range(1, attempts + 1):
        before = _descendants()
        try:
            init()
            return
        except Exception as exc:  # Ray raises a bare Exception for this case
            if "timed out during startup" not in str(exc):
                raise
            shutdown()
            _stop_new_descendants(before)
            if attempt == attempts:
                raise
            progress(f"Local Ray was slow to start ({exc}); starting it again")


def _descendants() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _stop_new_descendants(before: set[int], grace_s: float = 10.0) -> None:
    """Terminate (then kill) this process's descendants that were not there in ``before``."""
    new = [child for child in psutil.Process().children(recursive=True) if child.pid not in before]
    for child in new:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(new, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
