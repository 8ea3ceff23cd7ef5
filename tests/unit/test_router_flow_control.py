"""Flow control on the router's real request path (fake workers): priority bands, fairness
across tenants, deadline order, bounded queues, shedding, and per-request SLO fields.

One fake worker holds every request it serves after its first token (`pause_after=1`), so
the router's capacity (2 x 8 sequences) fills up and further requests wait in the flow
queue; closing a held route frees one slot, and the test sees which waiting request the
router dispatches next."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError
from mainsail.router.routing.route_stream import RouteStream
from mainsail.router.routing.router import Router
from mainsail.router.testing import (
    FakeWorker,
    add_fake_worker,
    fake_router,
    held_at_router,
    settle,
)
from mainsail.spec.admission import FlowControl
from mainsail.spec.slo import SLO, RequestTargetBounds, SLOClass

pytestmark = pytest.mark.unit
CAPACITY = 16  # the capacity filter's 2.0 x max_num_seqs 8 of a fake worker


def _req(label: str, **fields: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="tiny",
        prompt=f"request {label}",
        sampling=pb.SamplingParams(max_tokens=4),
        **fields,  # type: ignore[arg-type]
    )


class Bed:
    def __init__(self, model_dir: Path, **config: Any) -> None:
        """``config``: `RouterConfig` fields (validated there)."""
        slo = SLO(classes=[SLOClass(name="batch", priority=-1), SLOClass(name="vip", priority=5)])
        self.router, transport = fake_router(model_dir, slo=slo, **config)
        self.worker: FakeWorker = add_fake_worker(self.router, transport, "w", pause_after=1)
        self.held: list[tuple[RouteStream, AsyncGenerator[pb.TokenChunk, None]]] = []
        self.pending: dict[str, asyncio.Task[RouteStream]] = {}

    def prompt_of(self, request: pb.WorkerRequest) -> str:
        return self.router.tokenizer.decode(list(request.prompt_token_ids))

    async def hold(self, route: RouteStream) -> None:
        chunks = self.router.chunks(route)
        await anext(chunks)
        self.held.append((route, chunks))

    async def fill(self) -> None:
        for i in range(CAPACITY):
            await self.hold(await self.router.open(_req(f"filler {i}")))

    async def queue(
        self, label: str, tenant: str = "", *, grows: int = 1, **fields: object
    ) -> None:
        waiting = self.router.chooser.waiting
        self.pending[label] = asyncio.ensure_future(
            self.router.open(_req(label, **fields), tenant=tenant)
        )
        await held_at_router(self.router, waiting + grows)

    async def free_one(self) -> str:
        """Close one held route; the label of the request the router dispatched instead."""
        before = len(self.worker.submitted)
        _, chunks = self.held.pop(0)
        await chunks.aclose()
        for _ in range(500):
            if len(self.worker.submitted) > before:
                break
            await asyncio.sleep(0.01)
        label = self.prompt_of(self.worker.submitted[-1]).removeprefix("request ")
        await self.hold(await self.pending.pop(label))
        return label

    async def close(self) -> None:
        for task in self.pending.values():
            task.cancel()
        for _, chunks in self.held:
            await chunks.aclose()


async def test_a_higher_band_overtakes_a_full_lower_band(tiny_model_dir: Path) -> None:
    bed = Bed(tiny_model_dir)
    await bed.fill()
    for i in range(5):
        await bed.queue(f"low {i}", tenant="t")
    await bed.queue("high", tenant="t", slo_class="vip")
    assert await bed.free_one() == "high"
    assert await bed.free_one() == "low 0"
    await bed.close()


async def test_a_light_tenant_is_not_stuck_behind_a_heavy_one(tiny_model_dir: Path) -> None:
    bed = Bed(tiny_model_dir)
    await bed.fill()
    for i in range(10):
        await bed.queue(f"heavy {i}", fairness_id="heavy")
    await bed.queue("light", fairness_id="light")
    served = [await bed.free_one() for _ in range(2)]
    assert "light" in served  # not 11th: one round serves each tenant once
    await bed.close()


async def test_deadline_order_within_a_tenant(tiny_model_dir: Path) -> None:
    bed = Bed(tiny_model_dir)
    await bed.fill()
    for ms in (5000, 1000, 3000):
        await bed.queue(f"ttft {ms}", tenant="t", ttft_ms=ms)
    assert [await bed.free_one() for _ in range(3)] == ["ttft 1000", "ttft 3000", "ttft 5000"]
    await bed.close()


async def test_every_queue_is_bounded_and_lower_bands_are_shed(tiny_model_dir: Path) -> None:
    bed = Bed(tiny_model_dir, max_queue=4, flow=FlowControl(max_per_band=4, max_per_tenant=2))
    await bed.fill()
    await bed.queue("a1", tenant="a")
    await bed.queue("a2", tenant="a")
    with pytest.raises(RouterError) as refused:  # the tenant's own bound
        await bed.router.open(_req("a3"), tenant="a")
    assert refused.value.status == 429 and "tenant" in refused.value.message
    await bed.queue("b1", tenant="b")
    await bed.queue("b2", tenant="b")
    # The whole queue is full: a higher band displaces the newest of the lowest band.
    await bed.queue("vip", tenant="c", slo_class="vip", grows=0)
    await settle()
    shed = [label for label, task in bed.pending.items() if task.done()]
    assert len(shed) == 1 and shed[0] in ("a2", "b2")
    with pytest.raises(RouterError) as dropped:
        await bed.pending.pop(shed[0])
    assert dropped.value.status == 429 and "higher-priority" in dropped.value.message
    assert bed.router.chooser.waiting == 4
    assert bed.router.metrics.shed.labels("displaced")._value.get() == 1
    await bed.close()


async def test_sheddable_requests_are_dropped_under_pressure(tiny_model_dir: Path) -> None:
    bed = Bed(tiny_model_dir)
    await bed.fill()
    await bed.queue("spare", tenant="t", slo_class="batch")
    await bed.queue("real", tenant="u", grows=0)  # and "spare" is dropped
    with pytest.raises(RouterError) as dropped:
        await bed.pending.pop("spare")
    assert dropped.value.status == 429
    with pytest.raises(RouterError):  # and refused while real work waits
        await bed.router.open(_req("more", slo_class="batch"), tenant="t")
    assert await bed.free_one() == "real"
    await bed.close()


async def test_request_slo_fields_travel_to_the_worker(tiny_model_dir: Path) -> None:
    router, transport = fake_router(tiny_model_dir)
    worker = add_fake_worker(router, transport, "w")
    before = time.time()
    _ = [r async for r in router.generate(_req("x", ttft_ms=800, tpot_ms=40))]
    sent = worker.submitted[-1]
    assert before + 0.7 < sent.ttft_deadline <= time.time() + 0.8
    assert sent.tpot_target == pytest.approx(0.04)
    _ = [r async for r in router.generate(_req("y"))]  # the deployment's defaults
    assert worker.submitted[-1].tpot_target == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"ttft_ms": 10}, "ttft_ms"),
        ({"ttft_ms": 10_000_000}, "ttft_ms"),
        ({"tpot_ms": 1}, "tpot_ms"),
        ({"ttft_ms": float("nan")}, "ttft_ms"),
        ({"fairness_id": "x" * 200}, "fairness_id"),
    ],
)
def test_out_of_bounds_targets_are_refused_naming_the_field(
    tiny_model_dir: Path, fields: dict[str, object], param: str
) -> None:
    router, _ = fake_router(tiny_model_dir)
    with pytest.raises(RouterError) as refused:
        router.prepare(_req("x", **fields))
    assert refused.value.status == 400 and refused.value.param == param


def test_priority_comes_from_the_class_and_may_be_raised(tiny_model_dir: Path) -> None:
    router: Router
    classes = [SLOClass(name="batch", priority=-3, ttft_ms=9000)]
    router, _ = fake_router(tiny_model_dir, slo=SLO(classes=classes))
    sheddable = router.prepare(_req("x", slo_class="batch"))
    assert sheddable.priority == -3 and sheddable.ttft_target_s == 9.0
    # By default a request cannot pick its own band; the deployment may allow it, bounded.
    assert router.prepare(_req("x", priority=50)).priority == 0
    bounds = RequestTargetBounds(max_priority=5)
    router, _ = fake_router(tiny_model_dir, slo=SLO(classes=classes, request_bounds=bounds))
    assert router.prepare(_req("x", slo_class="batch", priority=2)).priority == 2
    assert router.prepare(_req("x", priority=50)).priority == 5
    assert router.prepare(_req("x", fairness_id="f")).flow == "f:f"
    assert router.prepare(_req("x", fairness_id="f"), tenant="k:1").flow == "k:1"
