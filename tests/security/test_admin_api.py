"""The router's admin API is never open (docs/security.md "The admin API").

`/workers`, drains, expert-parallel changes and migrations decide who serves what. The
attacker calls each of them against a real router with real workers (real engine, tiny
checkpoint) — without a token, with a wrong one, with a client API key — and the fleet is
unchanged; the operator's token works. A router configured without an admin token refuses
every admin call, whatever is sent; so does one started from its command line
(`python -m mainsail.router`) without `MAINSAIL_ROUTER_ADMIN_TOKEN`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from support.fleet import ADMIN_TOKEN, CLIENT_KEYS, fleet
from support.operator_harness import LoopbackRouter

from mainsail.spec.router_auth import ADMIN_TOKEN_ENV

pytestmark = pytest.mark.security

CALLS = [
    ("GET", "/workers", None),
    ("POST", "/workers/w0/drain", None),
    ("DELETE", "/workers/w0/drain", None),
    ("POST", "/workers/w0/experts", {"expertParallel": 2}),
    ("POST", "/requests/req-x/migrate", {"worker": "w1"}),
]
"""Every admin endpoint, with a body that would act if it were let through."""

STRANGERS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {CLIENT_KEYS[0]}"},  # a client key is not the admin token
    {"Authorization": f"Basic {ADMIN_TOKEN}"},  # the token, but not as a bearer
]


def _refused(reply: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, (reply.request.url, reply.text)
    error: dict[str, Any] = reply.json()["error"]  # an OpenAI-style error body
    assert error["code"] == code and error["message"] and "type" in error, error
    return error


async def test_without_the_token_nothing_changes_and_with_it_a_drain_works(
    tiny_model_dir: Path,
) -> None:
    async with fleet(tiny_model_dir, workers=2) as f, httpx.AsyncClient(timeout=30) as http:
        for method, path, body in CALLS:
            for headers in STRANGERS:
                reply = await http.request(method, f.http + path, json=body, headers=headers)
                _refused(reply, 401, "invalid_api_key")
                assert reply.headers["www-authenticate"] == "Bearer"
        assert not any(e.draining for e in f.router.registry.entries())  # nothing acted
        assert f.worker_ids() == {"w0", "w1"}

        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        drained = await http.post(f"{f.http}/workers/w0/drain", headers=admin)
        assert drained.status_code == 200 and drained.json()["draining"] is True
        listed = (await http.get(f"{f.http}/workers", headers=admin)).json()["data"]
        assert {w["id"]: w["draining"] for w in listed} == {"w0": True, "w1": False}
        undrained = await http.delete(f"{f.http}/workers/w0/drain", headers=admin)
        assert undrained.json()["draining"] is False
        assert not any(e.draining for e in f.router.registry.entries())


async def test_a_router_without_an_admin_token_refuses_every_admin_call(
    tiny_model_dir: Path,
) -> None:
    async with (
        fleet(tiny_model_dir, workers=1, admin_token=None) as f,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for method, path, body in CALLS:
            for headers in [*STRANGERS, {"Authorization": f"Bearer {ADMIN_TOKEN}"}]:
                reply = await http.request(method, f.http + path, json=body, headers=headers)
                error = _refused(reply, 403, "admin_disabled")
                assert ADMIN_TOKEN_ENV in error["message"]
        assert not any(e.draining for e in f.router.registry.entries())  # nothing acted
        # Inference and the probes are not the admin API: still served.
        assert (await http.get(f"{f.http}/health")).status_code == 200
        chat = {"model": "tiny", "prompt": "The harbour", "max_tokens": 2}
        served = await http.post(f"{f.http}/v1/completions", json=chat, headers=f.key())
        assert served.status_code == 200, served.text


def test_the_router_command_without_a_token_refuses_and_says_so(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`python -m mainsail.router` (what `mainsail router` runs) with no admin token in its
    environment: 403 to everyone, and its log says why at start."""
    router = LoopbackRouter(tiny_model_dir, tmp_path, env={ADMIN_TOKEN_ENV: ""})
    try:
        base = f"http://127.0.0.1:{router.http_port}"
        for method, path, body in CALLS:
            for headers in [*STRANGERS, {"Authorization": "Bearer anything"}]:
                reply = httpx.request(method, base + path, json=body, headers=headers, timeout=30)
                _refused(reply, 403, "admin_disabled")
    finally:
        router.stop()
    assert "admin API disabled" in (tmp_path / "router.log").read_text()


def test_the_router_command_with_a_token_takes_only_that_token(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    router = LoopbackRouter(tiny_model_dir, tmp_path, env={ADMIN_TOKEN_ENV: "s3cret-admin"})
    try:
        base = f"http://127.0.0.1:{router.http_port}"
        for headers in STRANGERS:
            reply = httpx.post(f"{base}/workers/w-0/drain", headers=headers, timeout=30)
            _refused(reply, 401, "invalid_api_key")
        assert [w["draining"] for w in router.listed()] == [False]
        reply = httpx.post(f"{base}/workers/w-0/drain", headers=router.admin, timeout=30)
        assert reply.status_code == 200 and reply.json()["draining"] is True
        assert [w["draining"] for w in router.listed()] == [True]
    finally:
        router.stop()
