"""`RouteStream` (an open request with its first chunk in hand) and small stream helpers the
request path and the moves between workers share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.registry import WorkerEntry
from mainsail.router.routing.prepare import Prepared


@dataclass
class KVMove:
    """A move with the KV under way: the target worker (booked) and its stream of the
    request (``first``: its first chunk, awaited from the start so that cancelling the move
    ends the stream at once), read once the source ends the request with finish reason
    "migrated"."""

    entry: WorkerEntry
    rest: AsyncIterator[pb.TokenChunk]
    first: asyncio.Future[pb.TokenChunk]

    @property
    def stream(self) -> AsyncIterator[pb.TokenChunk]:
        return _after(self.first, self.rest)


async def _after(
    first: asyncio.Future[pb.TokenChunk], rest: AsyncIterator[pb.TokenChunk]
) -> AsyncIterator[pb.TokenChunk]:
    yield await first
    async for chunk in rest:
        yield chunk


@dataclass
class RouteStream:
    """An open request: the first chunk is already in hand, `after_first` yields the others."""

    prepared: Prepared
    worker_id: str
    first: pb.TokenChunk
    after_first: AsyncIterator[pb.TokenChunk]
    started: float
    entry: WorkerEntry | None = None  # released (outstanding count) when the route ends
    migrate_to: str | None = None  # set by `Router.migrate`: "" = any worker, else its id
    kv_move: KVMove | None = None  # a move with the KV under way (`RequestMover.migrate`)
    kv_dropping: asyncio.Future[None] | None = None  # a KV move being given up
    moving: asyncio.Future[None] | None = None  # the latest KV move's task
    token_at: float | None = None  # when the latest tokens arrived (router clock)
    tpot_s: float = 0.0  # time per output token seen here, smoothed (0: not measured yet)
    generated: list[int] = field(default_factory=list)  # tokens streamed so far
    _closed: bool = field(default=False)

    def observe_tokens(self, count: int, now: float) -> None:
        """``count`` tokens arrived at ``now``: update the smoothed time per output token
        (what the SLO-rescue rule of the migration planner compares with the target)."""
        if count <= 0:
            return
        if self.token_at is not None:
            per_token = max(0.0, now - self.token_at) / count
            self.tpot_s = per_token if self.tpot_s == 0 else 0.7 * self.tpot_s + 0.3 * per_token
        self.token_at = now

    @property
    def closed(self) -> bool:
        """True once the route ended (finished, failed or abandoned by its client)."""
        return self._closed

    def close(self) -> bool:
        """Marks the route ended; True only the first time (the caller then releases what
        the route booked)."""
        if self._closed:
            return False
        self._closed = True
        return True


async def nothing() -> AsyncIterator[pb.TokenChunk]:
    return
    yield  # an async generator that yields nothing (a placeholder until `after_first` is set)


async def prepend(
    first: pb.TokenChunk, rest: AsyncIterator[pb.TokenChunk]
) -> AsyncIterator[pb.TokenChunk]:
    yield first
    async for chunk in rest:
        yield chunk


def whole_usage(chunk: pb.TokenChunk, prompt_tokens: int, completion_tokens: int) -> None:
    """A resumed worker counted the streamed tokens as prompt; report the request's own."""
    chunk.usage.prompt_tokens = prompt_tokens
    chunk.usage.completion_tokens = completion_tokens
    chunk.usage.cached_tokens = min(chunk.usage.cached_tokens, prompt_tokens)


async def close_stream(stream: AsyncIterator[pb.TokenChunk]) -> None:
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()
