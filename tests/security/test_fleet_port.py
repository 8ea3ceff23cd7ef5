"""The attacker on the router's fleet port, with the worker plane's mutual TLS on.

Registration decides who receives users' prompts, so it has its own listener: real workers
(real engine, tiny checkpoint) register there over mutual TLS with the deployment's CA and
the worker token, and serve. An outsider gets nowhere: plaintext, TLS without a client
certificate, a certificate from another CA, and the right certificate without the token are
all refused, and the clients' port never answers a Registry call.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import grpc
import pytest
from support.fleet import MODEL, fleet

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.kvhash import KVHashConfig
from mainsail.spec.worker_auth import TLS_SERVER_NAME, WorkerCredential
from mainsail.spec.worker_tls import issue

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
