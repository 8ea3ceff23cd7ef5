"""A local Ray instance on loopback for tests that start rank actors themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from mainsail.cli.local.stack import init_ray_retrying

# Ray waits a fixed 30 s for its raylet to register; on the shared two-core test machine a
# start under heavy load can miss that several times in a row.
RAY_START_ATTEMPTS = 5


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """Ray with ``num_cpus`` logical CPUs, bound to 127.0.0.1; started again (up to
    ``RAY_START_ATTEMPTS`` times) if Ray's own start-up wait runs out on a loaded machine;
    shut down after."""
    import ray

    for key, value in (
        ("RAY_AUTH_MODE", "disabled"),
        ("RAY_USAGE_STATS_ENABLED", "0"),
        ("RAY_DEDUP_LOGS", "0"),
    ):
        os.environ.setdefault(key, value)
    init_ray_retrying(
        lambda: ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        ),
        ray.shutdown,
        lambda message: None,
        attempts=RAY_START_ATTEMPTS,
    )
    try:
        yield
    finally:
        ray.shutdown()
