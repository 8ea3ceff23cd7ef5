"""A local Ray start (`mainsail up`, the tests, the benchmarks: `start_local_ray`) is tried
again only when Ray's own fixed start-up wait ran out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mainsail.cli.local.ray_start import init_ray_retrying

SLOW = Exception(
    "The current node timed out during startup. This could happen because some of the "
    "raylet failed to startup or the GCS has become overloaded."
)


class FakeRay:
    """Fails the first `slow` starts with Ray's start-up timeout, then starts."""

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.inits = 0
        self.shutdowns = 0

    def init(self) -> None:
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_slow_start_is_retried_after_a_shutdown() -> None:
    ray = FakeRay([SLOW, SLOW])
    said: list[str] = []
    init_ray_retrying(ray.init, ray.shutdown, said.append, attempts=3)
    assert (ray.inits, ray.shutdowns) == (3, 2)
    assert len(said) == 2 and "starting it again" in said[0]


def test_the_last_slow_start_is_raised() -> None:
    ray = FakeRay([SLOW, SLOW, SLOW])
    with pytest.raises(Exception, match="timed out during startup"):
        init_ray_retrying(ray.init, ray.shutdown, lambda _: None, attempts=3)
    assert (ray.inits, ray.shutdowns) == (3, 3)  # the last failed start is cleaned up too


def test_any_other_error_is_raised_at_once() -> None:
    ray = FakeRay([ValueError("resources: bad")])
    with pytest.raises(ValueError, match="resources"):
        init_ray_retrying(ray.init, ray.shutdown, lambda _: None, attempts=3)
    assert (ray.inits, ray.shutdowns) == (1, 0)


def test_a_failed_start_leaves_no_process_behind() -> None:
    """What a start that never finished launched is stopped before the next start and before
    the last failure is raised (Ray's shutdown alone left its GCS and raylet running)."""
    started: list[subprocess.Popen[bytes]] = []

    def init() -> None:
        started.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        raise SLOW

    with pytest.raises(Exception, match="timed out during startup"):
        init_ray_retrying(init, lambda: None, lambda _: None, attempts=2)
    assert len(started) == 2
    for proc in started:
        proc.wait(timeout=15)  # TimeoutExpired (a failure) if it was left running
