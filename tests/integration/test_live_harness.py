"""The live load generator against a real `mainsail up` (two real engine workers, tiny model).

Thirty Mooncake requests, shrunk to fit the tiny model, replayed open-loop over HTTP and a few
over gRPC; the report must be sane: every request answered, client-side TTFT positive and no
larger than end-to-end, hit rate a fraction, every request attributed to a worker. A dozen
Azure requests of each service (code, conversation) take the same path with the loader's fresh
block ids: none may find another's prefix in cache. Bounded: startup 240 s, each replay 60 s,
each request 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml

from mainsail.sim.live import (
    GrpcSender,
    HttpSender,
    LiveResult,
    PromptScaling,
    ReplaySettings,
    build_requests,
    render_live,
    replay,
    summarise_live,
)
from mainsail.sim.metrics import SLOTargets
from mainsail.sim.traces import default_jitter_s, load_trace, scale_trace

pytestmark = pytest.mark.integration
STARTUP_TIMEOUT_S = 240.0
SETTINGS = ReplaySettings(max_requests=30, max_seconds=60.0, request_timeout_s=30.0)
SCALING = PromptScaling(tokens_per_block=16, max_blocks=8, max_output_tokens=4)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from mainsail.cli.defaults import TINY_DEPLOYMENT

    tmp = tmp_path_factory.mktemp("live")
    doc = yaml.safe_load(TINY_DEPLOYMENT)
    doc["spec"]["pools"]["unified"]["replicas"] = 2
    doc["spec"]["pools"]["cache"] = {"enabled": False}
    (tmp / "d.yaml").write_text(yaml.safe_dump(doc))
    ready = tmp / "ready.json"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, "-m", "mainsail.cli.main", "up", "-f", str(tmp / "d.yaml")]
    cmd += ["--http-port", "0", "--grpc-port", "0", "--ready-file", str(ready), "--quiet"]
    with (tmp / "up.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            # The group may be gone already (the stack exited on its own): show its log.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"mainsail up did not start:\n{(tmp / 'up.log').read_text()[-3000:]}")
        time.sleep(0.2)
    yield json.loads(ready.read_text())
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _requests(limit: int, time_scale: float, name: str = "mooncake") -> list[Any]:
    trace = load_trace(name, limit=limit)
    trace = scale_trace(trace, jitter_s=default_jitter_s(name), seed=1)
    return build_requests(trace, SCALING, time_scale)


def _check(results: list[LiveResult], n: int) -> None:
    assert len(results) == n
    assert [r.error for r in results] == [""] * n
    for r in results:
        assert 0 < r.first_token - r.arrival <= r.finished - r.arrival
        assert 1 <= r.completion_tokens <= SCALING.max_output_tokens
        assert 0 <= r.cached_tokens < r.prompt_tokens
        assert r.worker.startswith("tiny-unified-")


def test_http_replay_reports_sane_figures(stack: dict[str, Any], tmp_path: Path) -> None:
    requests = _requests(30, time_scale=30.0)

    async def run() -> list[LiveResult]:
        async with httpx.AsyncClient(base_url=stack["http"], timeout=30) as client:
            return await replay(requests, HttpSender(client, stack["model"]), SETTINGS)

    t0 = time.perf_counter()
    results = asyncio.run(run())
    _check(results, 30)
    live = summarise_live(results, SLOTargets(), "http", time.perf_counter() - t0)
    s = live.summary
    assert s.requests == 30 and s.unfinished == 0 and not live.errors
    assert 0 < s.ttft[0] <= s.ttft[1] <= s.ttft[2] <= s.e2e[2]
    assert 0.0 <= s.hit_rate <= 1.0
    assert 0.0 <= s.slo_attainment <= 1.0 and s.goodput_rps >= 0.0
    assert sum(live.served.values()) == 30 and 1.0 <= s.served_max_over_mean <= 2.0
    assert all(math.isnan(q) for q in s.queue)  # not observable from a client
    text = render_live([live], SLOTargets(), {"target": "test"})
    assert text.startswith("# Mainsail live replay") and "| http |" in text


def test_grpc_replay_reports_workers_and_usage(stack: dict[str, Any]) -> None:
    requests = _requests(8, time_scale=30.0)

    async def run() -> list[LiveResult]:
        async with grpc.aio.insecure_channel(stack["grpc"]) as channel:
            return await replay(requests, GrpcSender(channel, stack["model"]), SETTINGS)

    results = asyncio.run(run())
    _check(results, 8)
    live = summarise_live(results, SLOTargets(), "grpc", 1.0)
    assert live.summary.unfinished == 0 and 0.0 <= live.summary.hit_rate <= 1.0


@pytest.mark.parametrize("name", ["azure-code", "azure-conv"])
def test_azure_replay_shares_no_prefix(stack: dict[str, Any], name: str) -> None:
    requests = _requests(12, time_scale=10.0, name=name)
    assert len({r.prompt_token_ids[:16] for r in requests}) == 12  # every prompt its own

    async def run() -> list[LiveResult]:
        async with httpx.AsyncClient(base_url=stack["http"], timeout=30) as client:
            return await replay(requests, HttpSender(client, stack["model"]), SETTINGS)

    results = asyncio.run(run())
    _check(results, 12)
    assert [r.cached_tokens for r in results] == [0] * 12
    live = summarise_live(results, SLOTargets(), "http", 1.0)
    assert live.summary.unfinished == 0 and live.summary.hit_rate == 0.0


def test_wall_time_bound_cuts_the_replay(stack: dict[str, Any]) -> None:
    requests = _requests(30, time_scale=1.0)  # arrivals spread over ~30 s of trace time
    bounded = ReplaySettings(max_requests=30, max_seconds=2.0, request_timeout_s=30.0)

    async def run() -> list[LiveResult]:
        async with httpx.AsyncClient(base_url=stack["http"], timeout=30) as client:
            return await replay(requests, HttpSender(client, stack["model"]), bounded)

    t0 = time.perf_counter()
    results = asyncio.run(run())
    assert time.perf_counter() - t0 < 2.0 + 1.0
    assert 0 < len(results) < 30
    assert all(r.arrival < 2.0 for r in results)
