"""Disaggregated prefill/decode through the real router, two real workers and a real Redis.

The router runs a request's prompt on the prefill worker (one token; the worker publishes the
prompt's KV blocks to Redis before answering), then continues it on the decode worker, which
fetches those blocks instead of recomputing them. The client's tokens must equal a single
engine's greedy tokens, and the decode worker must have served the prompt from the tier.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from support.fleet import WORKER
from support.reference import greedy_tokens

from mainsail.cli.local.redis_server import RedisServer
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.workers.engine import AsyncEngine
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration
MAX_TOKENS = 12


def _prompt_ids(n: int) -> list[int]:
    return torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist()


async def _scrape(host: WorkerHost) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"http://{host.metrics_address}/metrics")).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def test_prefill_on_one_worker_decode_on_another_via_redis(tiny_model_dir: Path) -> None:
    redis = RedisServer(maxmemory="64mb").start()
    router = RouterServer(
        RouterConfig(
            model_name="tiny", model_dir=tiny_model_dir, http_port=0, grpc_port=0, fleet_port=0,
            max_model_len=512, request_role="decode", disaggregated=True,
        ),
        worker_credential=WORKER,
    )  # fmt: skip
    hosts: dict[str, WorkerHost] = {}
    try:
        await router.start()
        for role in ("prefill", "decode"):
            host = WorkerHost(
                WorkerSpec(
                    worker_id=f"w-{role}", role=role, model_name="tiny", model_dir=tiny_model_dir,
                    router_address=f"127.0.0.1:{router.fleet_port}", redis_url=redis.url,
                ),
                WORKER,
            )  # fmt: skip
            await host.start()
            await host.wait_registered(30)
            hosts[role] = host
        prompt = _prompt_ids(100)  # 6 full blocks of 16 and a partial one
        request = pb.GenerateRequest(
            model="tiny",
            prompt_token_ids=prompt,
            sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
        )
        responses = [r async for r in router.router.generate(request)]

        tokens = [t for r in responses for t in r.token_ids]
        assert tokens == greedy_tokens(tiny_model_dir, prompt, MAX_TOKENS)
        assert responses[0].worker_id == "w-prefill" and responses[-1].worker_id == "w-decode"
        assert [r.finish_reason for r in responses if r.finish_reason] == ["length"]
        assert responses[-1].usage.prompt_tokens == 100
        assert responses[-1].usage.completion_tokens == MAX_TOKENS
        assert router.metrics.handoffs._value.get() == 1

        prefill, decode = hosts["prefill"].engine, hosts["decode"].engine
        assert isinstance(prefill, AsyncEngine) and isinstance(decode, AsyncEngine)
        published, fetched = prefill.engine.kv_tier, decode.engine.kv_tier
        assert published is not None and fetched is not None
        assert published.writer.stats.written >= 6  # the prompt's full blocks, before answering
        # The decode worker never computed this prompt: its 6 full blocks came from Redis.
        assert fetched.loader.tier.stats.fetched_blocks >= 6
        assert decode.engine.metrics().prefix_hit_tokens >= 6 * 16
        # The same figures on the workers' own /metrics.
        scraped = {role: await _scrape(host) for role, host in hosts.items()}
        assert scraped["prefill"]["mainsail_worker_kv_tier_stored_blocks_total"] >= 6
        assert scraped["decode"]["mainsail_worker_kv_tier_fetched_blocks_total"] >= 6
        assert scraped["decode"]["mainsail_worker_kv_tier_hit_tokens_total"] >= 6 * 16
        assert scraped["decode"]["vllm:prefix_cache_hits_total"] >= 6 * 16
        for values in scraped.values():
            assert values["mainsail_worker_kv_tier_checksum_misses_total"] == 0
            assert values["mainsail_worker_kv_tier_errors_total"] == 0
    finally:
        for host in hosts.values():
            await host.stop()
        await router.stop()
        redis.stop()


async def test_without_a_prefill_worker_requests_run_whole_on_decode(
    tiny_model_dir: Path,
) -> None:
    router = RouterServer(
        RouterConfig(
            model_name="tiny", model_dir=tiny_model_dir, http_port=0, grpc_port=0, fleet_port=0,
            max_model_len=512, request_role="decode", disaggregated=True,
        ),
        worker_credential=WORKER,
    )  # fmt: skip
    host = WorkerHost(
        WorkerSpec(
            worker_id="w-decode", role="decode", model_name="tiny", model_dir=tiny_model_dir,
            router_address=None,
        ),
        WORKER,
    )  # fmt: skip
    try:
        await router.start()
        host = WorkerHost(
            host.spec.model_copy(update={"router_address": f"127.0.0.1:{router.fleet_port}"}),
            WORKER,
        )
        await host.start()
        await host.wait_registered(30)
        prompt = _prompt_ids(40)
        request = pb.GenerateRequest(
            model="tiny",
            prompt_token_ids=prompt,
            sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
        )
        responses = [r async for r in router.router.generate(request)]
        assert [t for r in responses for t in r.token_ids] == greedy_tokens(
            tiny_model_dir, prompt, MAX_TOKENS
        )
        assert {r.worker_id for r in responses} == {"w-decode"}
        assert router.metrics.handoffs._value.get() == 0
    finally:
        await host.stop()
        await router.stop()
