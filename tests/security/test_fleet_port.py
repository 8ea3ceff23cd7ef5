"""The attacker on the router's fleet port, with the worker plane's mutual TLS on.

Registration decides who receives users' prompts, so it has its own listener: real workers
(real engine, tiny checkpoint) register there over mutual TLS with the deployment's CA and
the worker token, and serve. An outsider gets nowhere: plaintext, TLS without a client
certificate, a certificate from another CA, and the right certificate without the token are
all refused, and the clients' port never answers a Registry call. A router started by hand
without `MAINSAIL_WORKER_TOKEN` (a real `python -m mainsail.router` process) says so once at
start and registers no one: a real worker with a token of its own is refused through the real
`Registrar` with PERMISSION_DENIED naming the setting, as is every Registry call whatever it
carries, and no request reaches that worker.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import grpc
import httpx
import pytest
from support.fleet import MODEL, fleet
from support.operator_harness import LoopbackRouter
from support.registry_calls import expect_every_registry_call_refused

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.worker_auth import (
    TLS_SERVER_NAME,
    WORKER_TOKEN_ENV,
    WorkerCredential,
    disabled_detail,
)
from mainsail.spec.worker_tls import issue
from mainsail.workers.fake_engine import FakeEngine
from mainsail.workers.host import WorkerHost
from mainsail.workers.registration import RegistrationRefused
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.security


def _evil() -> pb.WorkerInfo:
    kv = KVHashConfig()
    return pb.WorkerInfo(
        worker_id="evil",
        address="127.0.0.1:1",
        role="unified",
        model=MODEL,
        max_model_len=512,
        kv_hash=pb.KVHashParams(
            block_size=kv.block_size, hash_seed=kv.hash_seed, algorithm=kv.algorithm
        ),
    )


async def _register(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> bool:
    reply = await pb_grpc.RegistryStub(channel).Register(_evil(), metadata=metadata, timeout=3)
    return bool(reply.accepted)


async def test_registration_over_mutual_tls_and_every_outsider_refused(
    tiny_model_dir: Path,
) -> None:
    material = issue()
    credential = WorkerCredential(token=secrets.token_hex(32), tls=material)
    async with fleet(tiny_model_dir, workers=1, worker_credential=credential) as f:
        # The real worker registered over TLS (that is how `fleet` got past wait_registered).
        assert f.worker_ids() == {"w0"}
        override = [("grpc.ssl_target_name_override", TLS_SERVER_NAME)]
        refused: dict[str, grpc.StatusCode] = {}

        async def attempt(
            name: str, channel: grpc.aio.Channel, md: tuple[tuple[str, str], ...]
        ) -> None:
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _register(channel, md)
                refused[name] = info.value.code()

        await attempt("plaintext", grpc.aio.insecure_channel(f.fleet), credential.metadata)
        anonymous = grpc.ssl_channel_credentials(root_certificates=material.ca)
        await attempt(
            "no client certificate",
            grpc.aio.secure_channel(f.fleet, anonymous, options=override),
            credential.metadata,
        )
        stranger = issue()
        other_ca = grpc.ssl_channel_credentials(
            root_certificates=material.ca,
            private_key=stranger.key,
            certificate_chain=stranger.cert,
        )
        await attempt(
            "certificate of another CA",
            grpc.aio.secure_channel(f.fleet, other_ca, options=override),
            credential.metadata,
        )
        no_token = WorkerCredential(tls=material)
        await attempt("no token", no_token.open_channel(f.fleet), ())
        await attempt(
            "client key for a token",
            no_token.open_channel(f.fleet),
            (("authorization", "Bearer sk-tenant-a"),),
        )
        await attempt("clients' port", credential.open_channel(f.grpc), credential.metadata)
        await attempt(
            "clients' port, plaintext", grpc.aio.insecure_channel(f.grpc), credential.metadata
        )
        assert refused == {
            "plaintext": grpc.StatusCode.UNAVAILABLE,
            "no client certificate": grpc.StatusCode.UNAVAILABLE,
            "certificate of another CA": grpc.StatusCode.UNAVAILABLE,
            "no token": grpc.StatusCode.UNAUTHENTICATED,
            "client key for a token": grpc.StatusCode.UNAUTHENTICATED,
            "clients' port": grpc.StatusCode.UNAVAILABLE,  # no TLS there: handshake fails
            "clients' port, plaintext": grpc.StatusCode.UNIMPLEMENTED,
        }
        assert f.worker_ids() == {"w0"}

        # The deployment's own certificate and the token: accepted (a control for the above).
        async with credential.open_channel(f.fleet) as channel:
            assert await _register(channel, credential.metadata)
        assert f.worker_ids() == {"w0", "evil"}


async def test_a_router_without_a_worker_token_registers_no_one(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    router = await asyncio.to_thread(
        LoopbackRouter, tiny_model_dir, tmp_path, model_name=MODEL, workers=(),
        env={WORKER_TOKEN_ENV: ""},
        config={"dispatch_timeout": 2.0, "cold_start_timeout": 2.0},
    )  # fmt: skip
    host: WorkerHost | None = None
    try:
        warnings = [
            line
            for line in (tmp_path / "router.log").read_text().splitlines()
            if "worker registration disabled" in line
        ]
        assert len(warnings) == 1 and WORKER_TOKEN_ENV in warnings[0], warnings

        # A real worker, with a token of its own, registering through the real Registrar.
        hopeful = WorkerCredential(token=secrets.token_hex(32))
        spec = WorkerSpec(
            worker_id="w-hopeful", model_name=MODEL, model_dir=tiny_model_dir,
            router_address=router.fleet, fake_engine=True, metrics_port=None,
        )  # fmt: skip
        host = WorkerHost(spec, hopeful)
        await host.start()
        with pytest.raises(RegistrationRefused) as refused:
            await host.wait_registered(30)
        assert "PERMISSION_DENIED" in str(refused.value)
        assert disabled_detail("router") in str(refused.value)

        # Every Registry call, whatever it carries, gets the same answer.
        async with grpc.aio.insecure_channel(router.fleet) as channel:
            await expect_every_registry_call_refused(
                channel, _evil(), "evil",
                ((), hopeful.metadata, (("authorization", "Bearer "),)),
                grpc.StatusCode.PERMISSION_DENIED, disabled_detail("router"),
            )  # fmt: skip

        # Nothing is routed to the would-be workers: none is listed, a request finds none.
        assert await asyncio.to_thread(router.listed) == []
        async with httpx.AsyncClient(timeout=60) as http:
            reply = await http.post(
                f"http://127.0.0.1:{router.http_port}/v1/completions",
                json={"model": MODEL, "prompt": "hello", "max_tokens": 2},
            )
        assert reply.status_code == 503, reply.text
        assert "No worker is registered" in reply.json()["error"]["message"]
        engine = host.engine
        assert isinstance(engine, FakeEngine)
        assert engine.prompt_tokens == engine.finished == engine.running == 0
    finally:
        if host is not None:
            await host.stop()
        await asyncio.to_thread(router.stop)
