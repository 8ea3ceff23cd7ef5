"""Router latency histograms (TTFT, inter-token, e2e) per model, pool and SLO class, observed
on the real request path over fake workers (real workers: tests/integration/
test_worker_metrics.py). Label values come from configuration only."""

from __future__ import annotations

from pathlib import Path

import pytest

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError
from mainsail.router.routing.router import Router
from mainsail.router.testing import add_fake_worker, fake_router
from mainsail.spec.slo import SLO, SLOClass

pytestmark = pytest.mark.unit


def _count(router: Router, name: str, pool: str, slo: str) -> float:
    labels = {"model": "tiny", "pool": pool, "slo_class": slo}
    value = router.metrics.registry.get_sample_value(f"mainsail_router_{name}_count", labels)
    return value or 0.0


def _request(max_tokens: int, slo_class: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model="tiny",
        prompt="a b c d",
        slo_class=slo_class,
        sampling=pb.SamplingParams(max_tokens=max_tokens),
    )


async def test_histograms_per_pool_and_slo_class(tiny_model_dir: Path) -> None:
    slo = SLO(classes=[SLOClass(name="interactive", priority=5)])
    router, transport = fake_router(tiny_model_dir, slo=slo)
    add_fake_worker(router, transport, "w0", token_delay=0.002)
    out = [r async for r in router.generate(_request(4, "interactive"))]
    assert sum(len(r.token_ids) for r in out) == 4
    out = [r async for r in router.generate(_request(3))]
    assert _count(router, "ttft_seconds", "unified", "interactive") == 1
    assert _count(router, "e2e_seconds", "unified", "interactive") == 1
    assert _count(router, "ttft_seconds", "unified", "none") == 1
    # One inter-token gap per token after the first.
    assert _count(router, "inter_token_latency_seconds", "unified", "interactive") == 3
    assert _count(router, "inter_token_latency_seconds", "unified", "none") == 2
    gaps = router.metrics.registry.get_sample_value(
        "mainsail_router_inter_token_latency_seconds_sum",
        {"model": "tiny", "pool": "unified", "slo_class": "interactive"},
    )
    assert gaps is not None and gaps > 0

    # A class nobody configured is refused before it can become a label.
    with pytest.raises(RouterError):
        [r async for r in router.generate(_request(2, "made-up"))]
    text = router.metrics.render().decode()
    assert "made-up" not in text


async def test_pool_label_is_the_serving_workers_role(tiny_model_dir: Path) -> None:
    router, transport = fake_router(tiny_model_dir, request_role="decode")
    add_fake_worker(router, transport, "d0", role="decode")
    [r async for r in router.generate(_request(2))]
    assert _count(router, "ttft_seconds", "decode", "none") == 1
    assert _count(router, "e2e_seconds", "decode", "none") == 1
    assert _count(router, "ttft_seconds", "unified", "none") == 0
