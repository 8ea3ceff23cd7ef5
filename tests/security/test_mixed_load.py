"""A bounded mixed load (CI-sized): valid requests with 5% malformed ones against a real
router and two real workers; not one valid request fails, no malformed one gets a 5xx, and
no worker is evicted. The 10-minute version is `bench/malformed_mix.py`."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.fleet import CLIENT_KEYS, MODEL, fleet
from support.mixed_load import Target, run_mix

pytestmark = pytest.mark.security


async def test_five_percent_malformed_costs_the_valid_requests_nothing(
    tiny_model_dir: Path,
) -> None:
    async with fleet(tiny_model_dir, workers=2) as f:
        target = Target(f.http, f.grpc, MODEL, CLIENT_KEYS[0])
        result = await run_mix(
            target, duration_s=60, max_requests=240, concurrency=6, malformed_fraction=0.05,
            seed=12,
        )  # fmt: skip
        assert not result.valid_failures, result.valid_failures[:5]
        assert not result.malformed_server_errors, result.malformed_server_errors[:5]
        malformed = sum(
            n for k, n in result.sent.items() if k not in ("http", "http-stream", "grpc")
        )
        assert malformed >= 3 and result.valid_ok >= 100, result.sent
        assert f.worker_ids() == {"w0", "w1"}
        assert f.router.metrics.failovers._value.get() == 0
        assert not f.router.router.moves.active
