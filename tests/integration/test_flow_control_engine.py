"""Flow control and deadlines with the real engine on the tiny checkpoint (issue 14): a real
router (both fronts, API keys on) and real workers on loopback.

- Fairness: one tenant floods the router (10x the other); the light tenant's requests are
  served within one round of the fair queue, not behind the whole flood, and its TTFT
  stays within its SLO class's target.
- Engine deadlines over the wire: requests queued inside one worker come out earliest
  `WorkerRequest.ttft_deadline` first.
- A bounded flood: a tenant sending more than the router will queue gets 429s (with
  `Retry-After`) for the excess, everything admitted completes, and nothing is left queued.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import httpx
import pytest
from support.fleet import CLIENT_KEYS, WORKER, fleet

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.slo import SLO, SLOClass

pytestmark = pytest.mark.integration
HEAVY, LIGHT = CLIENT_KEYS
ONE_SEQ = EngineSettings(max_model_len=512, max_num_seqs=1)


async def _complete(
    http: httpx.AsyncClient, key: str, label: str, **extra: object
) -> tuple[str, float, httpx.Response]:
    started = time.monotonic()
    body = {"model": "tiny", "prompt": f"tenant {label}", "max_tokens": 6, "ignore_eos": True}
    reply = await http.post(
        "/v1/completions",
        json={**body, **extra},
        headers={"Authorization": f"Bearer {key}"},
    )
    return label, time.monotonic() - started, reply


async def test_a_light_tenant_is_served_within_its_slo_beside_a_10x_flood(
    tiny_model_dir: Path,
) -> None:
    slo = SLO(classes=[SLOClass(name="interactive", ttft_ms=20_000)])
    async with (
        fleet(tiny_model_dir, workers=1, engine=ONE_SEQ, slo=slo) as f,
        httpx.AsyncClient(base_url=f.http, timeout=60) as http,
    ):
        done: list[str] = []

        async def tracked(key: str, label: str) -> tuple[str, float, httpx.Response]:
            result = await _complete(http, key, label, slo_class="interactive")
            done.append(label)
            return result

        heavy = [asyncio.ensure_future(tracked(HEAVY, f"heavy {i}")) for i in range(20)]
        while f.router.router.chooser.waiting < 15:  # the flood is queued at the router
            await asyncio.sleep(0.01)
        light = [asyncio.ensure_future(tracked(LIGHT, f"light {i}")) for i in range(2)]
        results = await asyncio.gather(*heavy, *light)
    assert all(reply.status_code == 200 for _, _, reply in results)
    # Served fairly: each light request is done while most of the flood queued before it
    # still waits (first come first served would put both at the very end).
    for label in ("light 0", "light 1"):
        assert len(done) - done.index(label) > 10, done
    light_s = [s for label, s, _ in results if label.startswith("light")]
    assert max(light_s) < 20.0  # the class's TTFT target bounds the whole short request


async def test_the_engine_runs_queued_requests_earliest_deadline_first(
    tiny_model_dir: Path,
) -> None:
    async with fleet(tiny_model_dir, workers=1, engine=ONE_SEQ) as f:
        host = f.workers[0]
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.WorkerStub(channel)
            order: list[str] = []

            async def submit(name: str, deadline: float, tokens: int) -> None:
                request = pb.WorkerRequest(
                    request_id=name,
                    prompt_token_ids=[5, 6, 7, 8],
                    sampling=pb.SamplingParams(max_tokens=tokens, ignore_eos=True),
                    ttft_deadline=deadline,
                )
                async for chunk in stub.Submit(request, metadata=WORKER.metadata, timeout=60):
                    if chunk.finish_reason:
                        order.append(name)

            now = time.time()
            blocker = asyncio.ensure_future(submit("blocker", 0, 40))  # holds the one slot
            load = pb.LoadSnapshot()
            while load.running < 1:
                load = await stub.Load(pb.LoadRequest(), metadata=WORKER.metadata, timeout=5)
            queued = [
                asyncio.ensure_future(submit(name, now + offset if offset else 0.0, 2))
                for name, offset in (("late", 30.0), ("none", 0.0), ("soon", 5.0), ("mid", 10.0))
            ]
            while load.waiting < 4:
                load = await stub.Load(pb.LoadRequest(), metadata=WORKER.metadata, timeout=5)
            await asyncio.gather(blocker, *queued)
    assert order == ["blocker", "soon", "mid", "late", "none"]


async def test_a_bounded_flood_is_refused_beyond_the_tenant_bound(tiny_model_dir: Path) -> None:
    async with (
        fleet(tiny_model_dir, workers=1, engine=ONE_SEQ, max_per_band=8, max_per_tenant=4) as f,
        httpx.AsyncClient(base_url=f.http, timeout=60) as http,
    ):
        results = await asyncio.gather(*[_complete(http, HEAVY, f"flood {i}") for i in range(16)])
        refused = [reply for _, _, reply in results if reply.status_code == 429]
        served = [reply for _, _, reply in results if reply.status_code == 200]
        # 2 in flight at the worker (capacity 2 x 1 sequence) + 4 queued for the tenant.
        assert len(served) + len(refused) == 16 and len(served) >= 6 and refused
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert all("tenant" in r.json()["error"]["message"] for r in refused)
        assert f.router.router.chooser.waiting == 0
        # The other tenant was never blocked by the flood's bound.
        _, _, other = await _complete(http, LIGHT, "after")
        assert other.status_code == 200
