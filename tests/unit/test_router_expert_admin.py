"""The router's `POST /workers/<id>/experts` admin endpoint over its real HTTP front, with
fake workers (fast tier): who may call it and how refusals read. A real sharded worker behind
it: tests/integration/test_operator_expert_parallel.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.http import serving

from mainsail.router.fleet.registry import WorkerRegistry
from mainsail.router.front.auth import Credentials
from mainsail.router.kvindex import GlobalKVIndex
from mainsail.router.routing.router import Router
from mainsail.router.scheduling import build_profile
from mainsail.router.settings import RouterConfig
from mainsail.router.testing import FakeTransport, add_fake_worker
from mainsail.spec.tokenizer import Tokenizer

pytestmark = pytest.mark.unit


def _router(model_dir: Path) -> tuple[Router, FakeTransport]:
    config = RouterConfig(model_name="tiny", model_dir=model_dir, max_model_len=256)
    transport = FakeTransport()
    router = Router(
        config, Tokenizer(model_dir), WorkerRegistry("tiny", config.kv_hash), transport,
        build_profile(config.profile), GlobalKVIndex(max_blocks=1000),
    )  # fmt: skip
    return router, transport


async def test_admin_endpoint_refusals(tiny_model_dir: Path) -> None:
    router, transport = _router(tiny_model_dir)
    add_fake_worker(router, transport, "w0")
    auth = {"Authorization": "Bearer admin-secret"}
    async with serving(router, Credentials(admin_token="admin-secret")) as http:
        url = "/workers/w0/experts"
        assert (await http.post(url, json={"expertParallel": 2})).status_code == 401
        bad = await http.post(url, json={"expertParallel": "2"}, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "expertParallel"
        assert (await http.post(url, json={"expertParallel": 0}, headers=auth)).status_code == 400
        unknown = await http.post("/workers/nope/experts", json={"expertParallel": 2}, headers=auth)
        assert unknown.status_code == 404
        # a fake worker runs no experts: the worker's refusal is a conflict, with its words
        refused = await http.post(url, json={"expertParallel": 2}, headers=auth)
        assert refused.status_code == 409
        assert "FAILED_PRECONDITION" in refused.json()["error"]["message"]
        listed = (await http.get("/workers", headers=auth)).json()["data"][0]
        assert listed["expert_parallel"] == 0
