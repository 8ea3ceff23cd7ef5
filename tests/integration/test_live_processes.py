"""`mainsail.sim.live_processes`, the live benchmarks' harness: a real router process and a
real fake-engine worker process on loopback, started from their settings, sharing the run's
worker token, registered, serving one request, then stopped; and a router that cannot start
fails the wait with its log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from mainsail.router.settings import RouterConfig
from mainsail.sim.live_processes import LiveProcesses
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV, generate_token
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration


def test_a_router_and_a_worker_start_register_serve_and_stop(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No token in the environment: the run's processes share one of their own (a router or
    # worker without one would serve no one).
    monkeypatch.delenv(WORKER_TOKEN_ENV, raising=False)
    processes = LiveProcesses(tmp_path)
    assert processes.environment()[WORKER_TOKEN_ENV] == processes.worker_token
    try:
        config = RouterConfig(
            model_name="tiny", model_dir=tiny_model_dir, http_port=0, grpc_port=0, fleet_port=0
        )
        router, ports = processes.start_router("router0", config, log_level="WARNING")
        assert ports.http == f"http://127.0.0.1:{ports.http_port}" and ports.http_port > 0
        spec = WorkerSpec(
            worker_id="w0",
            model_name="tiny",
            model_dir=tiny_model_dir,
            router_address=ports.fleet,
            fake_engine=True,
            metrics_port=None,
        )
        processes.start_worker("worker0", spec)
        processes.wait_registered([ports.http], 1, timeout=180)
        reply = httpx.post(
            f"{ports.http}/v1/completions",
            json={"model": "tiny", "prompt": "hello", "max_tokens": 2},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == 2
    finally:
        processes.stop()
    assert router.poll() is not None and not processes.procs


def test_the_environment_token_wins_over_the_runs_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = generate_token()
    monkeypatch.setenv(WORKER_TOKEN_ENV, token)
    assert LiveProcesses(tmp_path).environment()[WORKER_TOKEN_ENV] == token
    given = LiveProcesses(tmp_path, {WORKER_TOKEN_ENV: "  "})  # blank: none
    assert given.environment() == {WORKER_TOKEN_ENV: given.worker_token}


def test_a_router_that_exits_fails_the_wait_with_its_log(tmp_path: Path) -> None:
    processes = LiveProcesses(tmp_path)
    config = RouterConfig(model_name="tiny", model_dir=tmp_path / "missing")
    try:
        with pytest.raises(RuntimeError, match="router0: not ready") as failed:
            processes.start_router("router0", config, timeout=120)
        assert "missing" in str(failed.value)  # the tail of its log says why
    finally:
        processes.stop()
