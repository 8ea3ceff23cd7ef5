"""Disaggregated prefill/decode on the real request path with fake workers (fast tier; real
workers and Redis: tests/integration/test_disaggregated.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.routing.router import Router
from mainsail.router.testing import (
    FakeTransport,
    ManualClock,
    add_fake_worker,
    fake_router,
    held_at_router,
)

pytestmark = pytest.mark.unit


def _router(
    model_dir: Path, roles: tuple[str, ...], clock: ManualClock | None = None
) -> tuple[Router, FakeTransport]:
    router, transport = fake_router(
        model_dir, clock=clock, request_role="decode", disaggregated=True, resume_timeout=0.2,
        dispatch_timeout=0.5,
        cold_start_timeout=0.5,
    )  # fmt: skip
    for role in roles:
        add_fake_worker(router, transport, role, role=role)
    return router, transport


def _request(max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="tiny", prompt="a b c d", sampling=pb.SamplingParams(max_tokens=max_tokens)
    )


async def _collect(router: Router, request: pb.GenerateRequest) -> list[pb.GenerateResponse]:
    return [r async for r in router.generate(request)]


async def test_prefill_worker_gets_one_token_then_decode_continues(tiny_model_dir: Path) -> None:
    router, transport = _router(tiny_model_dir, ("prefill", "decode"))
    responses = [r async for r in router.generate(_request(5))]
    (first,) = transport.workers["prefill:1"].submitted
    (rest,) = transport.workers["decode:1"].submitted
    assert first.sampling.max_tokens == 1 and first.kv_publish
    assert rest.sampling.max_tokens == 4 and not rest.kv_publish
    assert list(rest.prompt_token_ids) == [*first.prompt_token_ids, responses[0].token_ids[0]]
    assert [r.worker_id for r in responses] == ["prefill", *["decode"] * 4]
    assert [r.finish_reason for r in responses] == ["", "", "", "", "length"]
    assert responses[0].usage.completion_tokens == 0  # the prefill half's usage is dropped
    assert responses[-1].usage.prompt_tokens == len(first.prompt_token_ids)
    assert responses[-1].usage.completion_tokens == 5
    assert router.metrics.handoffs._value.get() == 1


async def test_one_token_requests_and_missing_pools(tiny_model_dir: Path) -> None:
    router, transport = _router(tiny_model_dir, ("prefill", "decode"))
    [r async for r in router.generate(_request(1))]  # nothing to hand off: decode runs it
    assert transport.workers["prefill:1"].submitted == []
    assert len(transport.workers["decode:1"].submitted) == 1

    router, transport = _router(tiny_model_dir, ("decode",))  # no prefill pool registered
    responses = [r async for r in router.generate(_request(3))]
    assert {r.worker_id for r in responses} == {"decode"}
    assert not transport.workers["decode:1"].submitted[0].kv_publish

    clock = ManualClock()  # prefill only: no decode half, given up after resume_timeout
    router, transport = _router(tiny_model_dir, ("prefill",), clock)
    pending = asyncio.ensure_future(_collect(router, _request(3)))
    await held_at_router(router)
    clock.advance(0.2)
    router.notify()
    responses = await pending
    assert responses[-1].finish_reason == "error"
    assert "no decode worker" in responses[-1].error
