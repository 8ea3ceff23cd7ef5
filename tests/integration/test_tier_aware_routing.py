"""Tier-aware KV scoring with a real Redis, a real router and three real workers.

`w-device` serves a prompt first: its blocks are in its own cache and, written through, in
Redis. `w-redis` shares that Redis (same store and model namespace, so the same tier id) but
has never seen the prompt; `w-cold` has no tier. With the default routing profile the same
prompt must go to `w-device` (free) over both; with `w-device` drained, to `w-redis` (a fetch)
over `w-cold` (a full recompute), which then serves it from Redis. Tokens stay the reference
engine's greedy tokens throughout.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch
from support.fleet import WORKER
from support.reference import greedy_tokens

from mainsail.cli.local.redis_server import RedisServer
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.scheduling import RequestInfo
from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.kvhash import chain_hashes, hash_key
from mainsail.workers.engine import AsyncEngine
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration
MAX_TOKENS = 4
PROMPT_TOKENS = 16 * 12 + 3  # 12 full blocks of 16 and a partial one


async def _worker(
    router: RouterServer, model_dir: Path, name: str, redis: str | None
) -> WorkerHost:
    host = WorkerHost(
        WorkerSpec(
            worker_id=name, model_name="tiny", model_dir=model_dir,
            router_address=f"127.0.0.1:{router.fleet_port}", redis_url=redis,
        ),
        WORKER,
    )  # fmt: skip
    await host.start()
    await host.wait_registered(30)
    return host


async def _generate(router: RouterServer, prompt: list[int]) -> tuple[list[int], str]:
    request = pb.GenerateRequest(
        model="tiny",
        prompt_token_ids=prompt,
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
    )
    responses = [r async for r in router.router.generate(request)]
    return [t for r in responses for t in r.token_ids], responses[0].worker_id


async def _until(check: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_device_warm_beats_redis_warm_beats_cold(tiny_model_dir: Path) -> None:
    redis = RedisServer(maxmemory="64mb").start()
    router = RouterServer(
        RouterConfig(
            model_name="tiny", model_dir=tiny_model_dir, http_port=0, grpc_port=0, fleet_port=0,
            max_model_len=512,
        ),
        worker_credential=WORKER,
    )  # fmt: skip
    hosts: list[WorkerHost] = []
    prompt = torch.randint(3, 512, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(7))
    ids = prompt.tolist()
    expected = greedy_tokens(tiny_model_dir, ids, MAX_TOKENS)
    try:
        await router.start()
        hosts.append(await _worker(router, tiny_model_dir, "w-device", redis.url))
        tokens, served = await _generate(router, ids)
        assert (tokens, served) == (expected, "w-device")

        index = router.router.chooser.index
        hashes = _hashes(router, ids)
        # The worker's write-through reaches Redis and the router learns it as tier "redis".
        await _until(
            lambda: index.longest_prefix(hashes, tiers=("redis",)).get("w-device", 0) >= 12,
            "the router to learn w-device's Redis blocks",
        )
        assert index.longest_prefix(hashes).get("w-device", 0) >= 12

        hosts.append(await _worker(router, tiny_model_dir, "w-redis", redis.url))
        hosts.append(await _worker(router, tiny_model_dir, "w-cold", None))
        entries = {e.worker_id: e for e in router.router.registry.entries()}
        await _until(
            lambda: (
                all(e.load.kv_cost.prefill_s_per_token >= 0 for e in entries.values())
                and entries["w-redis"].load.kv_cost.tier_id != ""
            ),
            "the workers' cost reports",
        )
        tier_ids = {w: e.load.kv_cost.tier_id for w, e in entries.items()}
        assert tier_ids["w-device"] == tier_ids["w-redis"] != "" and tier_ids["w-cold"] == ""

        # The decision's inputs: w-redis can fetch the whole prefix, w-cold nothing; scored
        # device-warm > Redis-warm > cold.
        info = RequestInfo("probe", hashes, prompt_tokens=len(ids), max_tokens=MAX_TOKENS)
        ctx = router.router.chooser.context(info)
        assert ctx.tier_hits.get("w-redis", 0) >= 12 and "w-cold" not in ctx.tier_hits
        scores = router.router.chooser.profile.schedule(ctx).scores
        assert scores["w-device"] > scores["w-redis"] > scores["w-cold"]

        # Device-warm over both.
        tokens, served = await _generate(router, ids)
        assert (tokens, served) == (expected, "w-device")

        # Without it: Redis-warm over cold, and the Redis-warm worker fetches the prefix.
        await router.router.moves.drain("w-device")
        tokens, served = await _generate(router, ids)
        assert (tokens, served) == (expected, "w-redis")
        engine = hosts[1].engine
        assert isinstance(engine, AsyncEngine) and engine.engine.kv_tier is not None
        assert engine.engine.kv_tier.loader.tier.stats.fetched_blocks >= 12
        assert engine.engine.metrics().redis_hit_tokens >= 12 * 16
    finally:
        for host in hosts:
            await host.stop()
        await router.stop()
        redis.stop()


def _hashes(router: RouterServer, ids: list[int]) -> tuple[int, ...]:
    """The prompt's block ids as the router computes them (no adapter, no tenant)."""
    kv = router.config.kv_hash
    return tuple(chain_hashes(ids, kv.block_size, kv.hash_seed, hash_key(None, None)))
