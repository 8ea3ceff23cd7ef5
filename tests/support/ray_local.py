"""A local Ray instance on loopback for tests that start rank actors themselves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from mainsail.cli.local.ray_start import start_local_ray

# Ray waits a fixed 30 s for its raylet to register; on the shared two-core test machine a
# start under heavy load can miss that several times in a row.
RAY_START_ATTEMPTS = 5


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """Ray with ``num_cpus`` logical CPUs, bound to 127.0.0.1 (`start_local_ray`, started
    again up to ``RAY_START_ATTEMPTS`` times if Ray's own start-up wait runs out on a loaded
    machine); shut down after."""
    import ray

    start_local_ray(num_cpus, node_ip_address="127.0.0.1", attempts=RAY_START_ATTEMPTS)
    try:
        yield
    finally:
        ray.shutdown()
