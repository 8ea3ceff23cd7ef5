"""API keys and the admin token, over the real HTTP server and a real gRPC server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from support.http import serving

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.front.auth import Credentials
from mainsail.router.front.grpc_api import InferenceService
from mainsail.router.routing.router import Router
from mainsail.router.testing import add_fake_worker, fake_router

pytestmark = pytest.mark.unit
CREDS = Credentials(api_keys=frozenset({"k1", "k2"}), admin_token="root")


def _router(model_dir: Path) -> Router:
    router, transport = fake_router(model_dir)
    add_fake_worker(router, transport, "w0")
    return router


def test_credentials_from_env() -> None:
    creds = Credentials.from_env(
        {"MAINSAIL_ROUTER_API_KEYS": " a, b ,,", "MAINSAIL_ROUTER_ADMIN_TOKEN": "t"}
    )
    assert creds == Credentials(frozenset({"a", "b"}), "t")
    assert Credentials.from_env({}) == Credentials()
    assert creds.client_allowed("Bearer a") and creds.client_allowed("bearer  b ")
    assert not creds.client_allowed("Bearer c") and not creds.client_allowed("Basic a")
    assert not creds.client_allowed(None) and not creds.client_allowed("Bearer")
    assert Credentials().client_allowed(None)
    # No admin token configured: the admin API is closed to everyone, never open.
    assert not Credentials().admin_enabled and creds.admin_enabled
    assert not any(Credentials().admin_allowed(a) for a in (None, "Bearer ", "Bearer x"))


async def test_a_router_without_an_admin_token_refuses_every_admin_call(
    tiny_model_dir: Path,
) -> None:
    router = _router(tiny_model_dir)
    async with serving(router, Credentials()) as c:
        for method, path in [
            ("GET", "/workers"),
            ("POST", "/workers/w0/drain"),
            ("POST", "/workers/w0/experts"),
            ("POST", "/requests/r/migrate"),
        ]:
            for auth in ({}, {"Authorization": "Bearer anything"}):
                reply = await c.request(method, path, headers=auth)
                assert reply.status_code == 403, (method, path, auth)
                error = reply.json()["error"]
                assert error["code"] == "admin_disabled"
                assert "MAINSAIL_ROUTER_ADMIN_TOKEN" in error["message"]
        assert not any(e.draining for e in router.registry.entries())  # nothing acted
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
        assert (await c.post("/v1/completions", json=body)).status_code == 200  # inference open


async def test_http_needs_a_key_for_the_api_and_the_token_for_admin(tiny_model_dir: Path) -> None:
    router = _router(tiny_model_dir)
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    async with serving(router, CREDS) as c:
        missing = await c.post("/v1/completions", json=body)
        assert missing.status_code == 401
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = await c.post("/v1/completions", json=body, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        ok = await c.post("/v1/completions", json=body, headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200 and ok.json()["choices"]
        assert (await c.get("/v1/models")).status_code == 401
        # Probes and Prometheus stay open.
        assert (await c.get("/health")).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert 'outcome="http_401"} 3.0' in metrics
        # Admin endpoints want the admin token, not a client key.
        user = {"Authorization": "Bearer k1"}
        assert (await c.get("/workers", headers=user)).status_code == 401
        assert (await c.post("/workers/w0/drain", headers=user)).status_code == 401
        admin = {"Authorization": "Bearer root"}
        assert (await c.get("/workers", headers=admin)).json()["data"][0]["id"] == "w0"
        drained = await c.post("/workers/w0/drain", headers=admin)
        assert drained.json()["draining"] is True


async def test_grpc_needs_a_key(tiny_model_dir: Path) -> None:
    router = _router(tiny_model_dir)
    server = grpc.aio.server()
    pb_grpc.add_InferenceServicer_to_server(InferenceService(router, CREDS), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = pb.GenerateRequest(model="tiny", prompt="x", sampling=pb.SamplingParams(max_tokens=2))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                [r async for r in stub.Generate(request, timeout=10)]
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "API key" in (info.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ListModels(pb.ListModelsRequest(), timeout=10)
            good = (("authorization", "Bearer k1"),)
            responses = [r async for r in stub.Generate(request, timeout=10, metadata=good)]
            assert responses[-1].finish_reason == "length"
            models = await stub.ListModels(pb.ListModelsRequest(), timeout=10, metadata=good)
            assert models.models[0].id == "tiny"
    finally:
        await server.stop(None)
