"""Live migration that moves KV, directly between workers (`Worker.Migrate`, `ReceiveKV`).

Why direct, worker to worker over one gRPC stream, rather than through the Redis tier: the
tier may not exist (it is optional), holds only full blocks named by prefix hash (a running
request's last, partly filled block and its sampler and detokenizer state have no place
there), evicts under pressure, and would cost every block two network hops and a Redis
write. Llumnix moves KV directly between instances for the same reasons. The integrity
guarantees of the tier come along anyway: blocks travel in its format (`kv_transfer.py`:
model identity header, per-block checksum), and the stream needs the worker-plane
credential (token, mutual TLS) like every router → worker call.

Source (`migrate`, the answer to the router's `Migrate`): stage 1 copies every full block the
request has computed, while it keeps decoding; each later stage copies the blocks filled
since the previous one; once a stage had at most `final_blocks` blocks (or after
`max_stages`), the request is paused, its remaining blocks (the partly filled last one
included) go out with its state, and when the target answers that it adopted the request,
the request ends here with finish reason "migrated". The pause lasts one small stage, however
long the context: that is the point. Any failure (target gone, refused, timeout) resumes
the request here where it paused, and the reply says why; the router then moves it by
recompute.

Target (`receive`): only a request the router announced (a `WorkerRequest` with ``adopt``,
streaming through `adopted`) may arrive; the announced tokens are checked and hashed while
the first stages travel, its blocks are checked and held in the paged cache, and the last
stage's blocks and the state start it in one call on the engine thread (`AsyncEngine.adopt`),
which hashes only the blocks the announcement did not cover: the pause stays flat. A stream
that breaks before the state arrives frees what it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

import grpc
import torch

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.spec.keepalive import client_options
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.engine import (
    AsyncEngine,
    Engine,
    EngineRequest,
    MigrationError,
    RequestOutput,
)
from mainsail.workers.kv_transfer import (
    KVRefused,
    stage_blocks,
    stage_messages,
    state_from_proto,
    state_to_proto,
)
from mainsail.workers.kvtier import BlockCodec

log = logging.getLogger(__name__)

MAX_STAGES = 8
"""Stages before the pause at most (each copies what the previous one's transfer let the
request write)."""
FINAL_BLOCKS = 2
"""A stage this small is followed by the pause."""
ADOPT_TIMEOUT_S = 120.0
"""How long an announced request waits for its source to move it (then it fails)."""
STAGE_TIMEOUT_S = 60.0
"""How long a whole migration may take before the source gives up and resumes."""
_INLINE_BYTES = 1 << 20  # encode/verify smaller stages on the event loop, larger in a thread


class KVMigrator:
    """A worker's side of KV migrations, as source and as target."""

    def __init__(
        self,
        engine: AsyncEngine,
        credential: WorkerCredential | None = None,
        *,
        max_stages: int = MAX_STAGES,
        final_blocks: int = FINAL_BLOCKS,
        adopt_timeout: float = ADOPT_TIMEOUT_S,
        timeout: float = STAGE_TIMEOUT_S,
        stage_hook: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.engine = engine
        self.credential = credential or WorkerCredential()
        self.max_stages = max_stages
        self.final_blocks = final_blocks
        self.adopt_timeout = adopt_timeout
        self.timeout = timeout
        self._codec: BlockCodec | None = None
        # Awaited at each step of a source's migration ("stage 1", ..., "paused", "adopted"):
        # the seam tests use to kill the source at every point.
        self.stage_hook = stage_hook

    async def codec(self) -> BlockCodec:
        """This worker's block layout and model identity (computed once, off the loop)."""
        if self._codec is None:
            self._codec = await asyncio.to_thread(self.engine.engine.kv_block_codec)
        return self._codec

    # ------------------------------------------------------------------ source

    async def migrate(
        self, request: pb.MigrateRequest, metadata: Sequence[tuple[str, str]] = ()
    ) -> pb.MigrateReply:
        """Move ``request.request_id`` with its KV to ``request.target_address`` (see the
        module docstring); never raises: a failure is ``accepted=false`` with the reason.
        ``metadata`` (the trace context) goes with the `ReceiveKV` call."""
        rid = request.request_id
        reply = pb.MigrateReply()
        if not rid or not request.target_address:
            reply.detail = "request_id and target_address are required"
            return reply
        max_stages = min(max(request.max_stages or self.max_stages, 1), 64)
        paused_at: float | None = None
        channel = self._channel(request.target_address)
        call = pb_grpc.WorkerStub(channel).ReceiveKV(
            metadata=(*self.credential.metadata, *metadata), timeout=self.timeout
        )
        try:
            codec = await self.codec()
            sent = 0
            last = -1
            while True:
                final = reply.stages + 1 >= max_stages or 0 <= last <= self.final_blocks
                exported = await self.engine.call(
                    partial(Engine.export_kv, request_id=rid, first_block=sent, final=final)
                )
                if final:
                    paused_at = time.perf_counter()
                await self._at("paused" if final else f"stage {reply.stages + 1}")
                size = exported.num_blocks * codec.block_bytes()
                encode = (codec, rid, exported.first_block, exported.blocks)
                if size > _INLINE_BYTES:
                    messages = await asyncio.to_thread(_messages, *encode)
                else:
                    messages = _messages(*encode)
                if exported.state is not None:
                    messages[-1].state.CopyFrom(state_to_proto(exported.state))
                ack = pb.KVStageAck()
                for message in messages:
                    await call.write(message)
                    answer = await call.read()
                    if answer is grpc.aio.EOF:
                        raise MigrationError("the target closed the stream")
                    ack = answer
                sent += exported.num_blocks
                reply.stages += 1
                reply.blocks += exported.num_blocks
                last = exported.num_blocks
                if final:
                    if not ack.adopted:
                        raise MigrationError("the target did not adopt the request")
                    reply.final_blocks = exported.num_blocks
                    await self._at("adopted")
                    break
            with contextlib.suppress(grpc.aio.AioRpcError):
                await call.done_writing()
            await self.engine.call(partial(Engine.end_export, request_id=rid, moved=True))
            reply.accepted = True
            reply.detail = f"moved to {request.target_address}"
        except grpc.aio.AioRpcError as exc:
            reply.detail = f"target refused or failed: {exc.code().name}: {exc.details()}"
        except (MigrationError, KVRefused) as exc:
            reply.detail = str(exc)
        except Exception as exc:  # never leave the request paused
            log.exception("KV migration of %s failed", rid)
            reply.detail = f"{type(exc).__name__}: {exc}"
        finally:
            if not reply.accepted:
                call.cancel()
                with contextlib.suppress(RuntimeError):
                    self.engine.post(partial(Engine.end_export, request_id=rid, moved=False))
            await channel.close()
        if paused_at is not None:
            reply.pause_seconds = time.perf_counter() - paused_at
        return reply

    async def _at(self, point: str) -> None:
        if self.stage_hook is not None:
            await self.stage_hook(point)

    def _channel(self, address: str) -> grpc.aio.Channel:
        options = [*client_options(), *self.credential.channel_options()]
        tls = self.credential.channel_credentials()
        if tls is not None:
            return grpc.aio.secure_channel(address, tls, options=options)
        return grpc.aio.insecure_channel(address, options=options)

    # ------------------------------------------------------------------ target

    def adopted(
        self, request_id: str, announced: EngineRequest | None = None
    ) -> AsyncIterator[RequestOutput]:
        """The outputs of an announced request once its source moved it here; its tokens as
        announced are checked and hashed meanwhile, so adopting it takes no longer with a
        long context."""
        return self.engine.adopted(request_id, self.adopt_timeout, announced)

    async def receive(self, stages: AsyncIterator[pb.KVStage]) -> AsyncIterator[pb.KVStageAck]:
        """Take one request's blocks and state (see the module docstring); raises `KVRefused`,
        `MigrationError` or `EngineInputError` for what it will not take."""
        codec = await self.codec()
        rid: str | None = None
        adopted = False
        held = 0
        try:
            async for stage in stages:
                if rid is None:
                    if not self.engine.awaits(stage.request_id):
                        raise MigrationError(
                            f"no request {stage.request_id!r} waits to be moved here"
                        )
                    rid = stage.request_id
                elif stage.request_id != rid:
                    raise KVRefused("a ReceiveKV stream carries one request")
                if len(stage.blocks) > _INLINE_BYTES:
                    blocks = await asyncio.to_thread(stage_blocks, codec, stage)
                else:
                    blocks = stage_blocks(codec, stage)
                if stage.HasField("state"):  # the pause: last blocks and adoption, one call
                    state = state_from_proto(rid, stage.state)
                    held = await self.engine.adopt(state, stage.first_block, blocks) or held
                    adopted = True
                    yield pb.KVStageAck(blocks=held, adopted=True)
                    return
                if blocks is not None:
                    held = await self.engine.call(
                        partial(
                            Engine.import_kv,
                            request_id=rid,
                            first_block=stage.first_block,
                            blocks=blocks,
                        )
                    )
                yield pb.KVStageAck(blocks=held)
        finally:
            if rid is not None and not adopted:
                with contextlib.suppress(RuntimeError):
                    self.engine.post(partial(Engine.drop_import, request_id=rid))


def _messages(
    codec: BlockCodec, rid: str, first_block: int, blocks: torch.Tensor | None
) -> list[pb.KVStage]:
    return list(stage_messages(codec, rid, first_block, blocks))
