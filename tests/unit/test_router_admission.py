"""Admission: the TTFT prediction (one cost model, the simulator's) and the early 429 with a
reason and `Retry-After` over HTTP and gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support.http import serving

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.front.grpc_api import InferenceService
from mainsail.router.routing.router import Router
from mainsail.router.scheduling import RequestInfo, SchedulingContext
from mainsail.router.scheduling.admission import admit, predict_ttft
from mainsail.router.testing import add_fake_worker, fake_router, idle_worker
from mainsail.sim.cost import load_profile
from mainsail.spec.admission import Admission

pytestmark = pytest.mark.unit
COST = load_profile("cpu-tiny").step_cost()
BLOCK = 16


def _request(prompt_tokens: int = 64) -> RequestInfo:
    return RequestInfo("r", (), prompt_tokens, 8)


def test_an_idle_worker_predicts_the_simulators_prefill_time() -> None:
    """One cost model: on an idle worker the prediction is the simulator's prefill time (its
    first step woken from idle, as the simulator charges it)."""
    idle = idle_worker()
    for tokens in (16, 300, 512, 1500):
        assert predict_ttft(COST, idle, tokens, 0, BLOCK) == pytest.approx(
            COST.prefill_time(tokens) + COST.idle_wake_s
        )
    # A cached prefix is cheaper; queued prefill and running decodes make it later.
    assert predict_ttft(COST, idle, 512, 16, BLOCK) < predict_ttft(COST, idle, 512, 0, BLOCK)
    busy = idle_worker(pending_prefill_tokens=4096)
    decoding = idle_worker(running=30, kv_blocks_used=900)
    base = predict_ttft(COST, idle, 64, 0, BLOCK)
    assert predict_ttft(COST, busy, 64, 0, BLOCK) > base + 4096 * COST.token_s
    assert predict_ttft(COST, decoding, 64, 0, BLOCK) > base


def test_admit_picks_the_best_worker_and_refuses_with_a_reason() -> None:
    workers = (
        idle_worker("busy", pending_prefill_tokens=100_000),
        idle_worker("free"),
        idle_worker("decode-role", role="decode"),
    )
    ctx = SchedulingContext(request=_request(), workers=workers)
    ok = admit(COST, ctx, block_size=BLOCK, target_s=0.5)
    assert ok.admit and ok.worker_id == "free"
    late = admit(COST, ctx, block_size=BLOCK, target_s=0.5, waited_s=0.6)
    assert not late.admit and "500 ms target" in late.reason and late.retry_after_s >= 1
    # Work queued at the router ahead of it is spread over the candidates.
    queued = admit(COST, ctx, block_size=BLOCK, target_s=0.5, queued_ahead_tokens=400_000)
    assert not queued.admit and "400000 prompt tokens queued" in queued.reason
    assert queued.retry_after_s == pytest.approx(round(queued.predicted_s - 0.5 + 0.5), abs=1)
    assert admit(COST, ctx, block_size=BLOCK, target_s=0.5, waited_s=0.6, headroom=3).admit
    nobody = SchedulingContext(request=_request(), workers=())
    assert admit(COST, nobody, block_size=BLOCK, target_s=0.001).admit


def _loaded_router(model_dir: Path) -> Router:
    router, transport = fake_router(model_dir, admission=Admission(step_cost=COST))
    add_fake_worker(router, transport, "w")
    # The worker reports a long prefill queue: seconds of work on this cost model.
    router.registry.heartbeat("w", pb.LoadSnapshot(pending_prefill_tokens=200_000))
    return router


async def test_http_refuses_early_with_reason_and_retry_after(tiny_model_dir: Path) -> None:
    router = _loaded_router(tiny_model_dir)
    body = {"model": "tiny", "prompt": "hello there", "max_tokens": 2}
    async with serving(router) as http:
        refused = await http.post(
            "/v1/completions", json=body, headers={"x-mainsail-ttft-ms": "500"}
        )
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "slo_unattainable" and "500 ms target" in error["message"]
        assert int(refused.headers["retry-after"]) >= 2
        assert router.metrics.shed.labels("predicted_ttft")._value.get() == 1
        # A target the worker can meet is served.
        loose = {**body, "ttft_ms": 60_000}
        assert (await http.post("/v1/completions", json=loose)).status_code == 200
        bad = await http.post("/v1/completions", json=body, headers={"x-mainsail-ttft-ms": "soon"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-mainsail-ttft-ms"


async def test_grpc_refuses_with_resource_exhausted_and_a_retry_after_trailer(
    tiny_model_dir: Path,
) -> None:
    router = _loaded_router(tiny_model_dir)
    server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(InferenceService(router), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = pb.GenerateRequest(
        model="tiny", prompt="x", sampling=pb.SamplingParams(max_tokens=2), ttft_ms=500
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [r async for r in stub.Generate(request, timeout=10)]
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "500 ms target" in (info.value.details() or "")
            trailers = dict(info.value.trailing_metadata() or ())
            assert int(trailers["retry-after"]) >= 2
    finally:
        await server.stop(None)
