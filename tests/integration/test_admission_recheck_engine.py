"""Admission re-checked while requests wait, with real workers (issue 14): a real router
(both fronts, API keys on, the `cpu-tiny` step cost for admission) and one real worker on the
tiny checkpoint that runs one sequence at a time.

A higher band of long requests keeps the worker busy; requests with a short TTFT target are
admitted on arrival (the queue ahead of them holds only short prompts, so the prediction
says they can make it) and then wait behind that band. Once their wait plus the predicted
prefill passes the target, the router refuses them — HTTP 429 `slo_unattainable` with
`Retry-After`, gRPC `RESOURCE_EXHAUSTED` with a `retry-after` trailer — while the long
requests are still running, instead of holding them until the dispatch timeout.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import httpx
import pytest
from support.fleet import CLIENT_KEYS, fleet

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.sim.cost import load_profile
from mainsail.spec.admission import Admission
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.slo import SLO, SLOClass

pytestmark = pytest.mark.integration
KEY = CLIENT_KEYS[0]
TARGET_MS = 300
SLO_CLASSES = SLO(
    classes=[SLOClass(name="vip", priority=10, ttft_ms=60_000), SLOClass(name="standard")]
)


async def test_a_waiting_request_that_can_no_longer_make_its_target_is_refused(
    tiny_model_dir: Path,
) -> None:
    cost = load_profile("cpu-tiny").step_cost()
    async with (
        fleet(
            tiny_model_dir,
            workers=1,
            engine=EngineSettings(max_model_len=512, max_num_seqs=1),
            slo=SLO_CLASSES,
            admission=Admission(step_cost=cost),
            dispatch_timeout=60.0,
        ) as f,
        httpx.AsyncClient(base_url=f.http, timeout=90) as http,
    ):
        chooser = f.router.router.chooser
        finished: list[float] = []

        async def long_request(i: int) -> httpx.Response:
            body = {
                "model": "tiny",
                "prompt": f"long {i}",
                "max_tokens": 480,
                "ignore_eos": True,
                "slo_class": "vip",
            }
            reply = await http.post("/v1/completions", json=body, headers=f.key(0))
            finished.append(time.monotonic())
            return reply

        # The worker takes two (its capacity filter allows twice its one sequence); the
        # rest of the band waits at the router, ahead of every band-0 request.
        longs = [asyncio.ensure_future(long_request(i)) for i in range(4)]
        while chooser.waiting < 2:
            await asyncio.sleep(0.01)

        async def http_short() -> tuple[float, httpx.Response]:
            started = time.monotonic()
            body = {"model": "tiny", "prompt": "short", "max_tokens": 2, "ttft_ms": TARGET_MS}
            reply = await http.post("/v1/completions", json=body, headers=f.key(0))
            return time.monotonic() - started, reply

        async def grpc_short() -> tuple[float, grpc.aio.AioRpcError]:
            request = pb.GenerateRequest(
                model="tiny",
                prompt="short",
                sampling=pb.SamplingParams(max_tokens=2),
                ttft_ms=TARGET_MS,
            )
            started = time.monotonic()
            async with grpc.aio.insecure_channel(f.grpc) as channel:
                stub = pb_grpc.InferenceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    async for _ in stub.Generate(request, metadata=f.metadata(0), timeout=90):
                        pass
            return time.monotonic() - started, info.value

        (http_s, refused), (grpc_s, error) = await asyncio.gather(http_short(), grpc_short())
        # Refused while the band ahead still waited at the router (so they would have waited
        # longer still), at about the target, not after the 60 s dispatch timeout.
        assert chooser.flow.band_count(10) > 0
        assert refused.status_code == 429, refused.text
        body = refused.json()["error"]
        assert body["code"] == "slo_unattainable", body
        assert "while waiting" in body["message"] and f"{TARGET_MS} ms target" in body["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "while waiting" in (error.details() or "")
        assert int(dict(error.trailing_metadata() or ())["retry-after"]) >= 1
        assert max(http_s, grpc_s) < 30  # well before the dispatch timeout (60 s)
        assert f.router.router.metrics.shed.labels("predicted_ttft")._value.get() >= 2
        # The long requests are unaffected and all complete.
        replies = await asyncio.gather(*longs)
        assert all(r.status_code == 200 for r in replies) and len(finished) == 4
        assert chooser.waiting == 0
