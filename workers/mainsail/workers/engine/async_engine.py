"""`AsyncEngine`: an `Engine` driven by one dedicated thread, streamed to asyncio callers.

Why a thread: a step is a blocking torch computation; running it on the event loop would
stall every other request's network I/O. The engine object is touched only by its thread;
callers talk to it through a command queue (add, abort) and receive outputs through one
`asyncio.Queue` per request, fed with `call_soon_threadsafe`. Metrics and KV events are
copied out by the thread after each step, so reading them never races the engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from mainsail.workers.engine.engine import Engine
from mainsail.workers.engine.errors import EngineFatalError, EngineInputError
from mainsail.workers.engine.kv_adoption import PreparedAdoption
from mainsail.workers.engine.kv_events import KVEvent
from mainsail.workers.engine.kv_migration import MigratedState, MigrationError
from mainsail.workers.engine.metrics import EngineMetrics
from mainsail.workers.engine.request import EngineRequest, RequestOutput

log = logging.getLogger(__name__)
_IDLE_WAIT_S = 0.5


@dataclass(frozen=True)
class _Add:
    """Command: start ``request``."""

    request: EngineRequest


@dataclass(frozen=True)
class _Abort:
    """Command: stop the request ``request_id``."""

    request_id: str


@dataclass(frozen=True)
class _Call:
    """Command: run ``fn`` on the engine thread between steps (KV migration)."""

    fn: Callable[[Engine], Any]
    future: concurrent.futures.Future[Any]


_Command = _Add | _Abort | _Call
T = TypeVar("T")


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]


class AsyncEngine:
    """Runs ``engine`` on its own thread until `shutdown`."""

    def __init__(
        self, engine: Engine, on_fatal: Callable[[BaseException], None] | None = None
    ) -> None:
        self.engine = engine
        self.on_fatal = on_fatal
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
        self._awaiting: set[str] = set()  # `adopted` streams whose request has not arrived
        self._prepared: dict[str, PreparedAdoption] = {}  # their announced tokens, hashed
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._events: list[KVEvent] = []
        self._snapshot: list[int] = []
        self._metrics = engine.metrics()
        self._thread = threading.Thread(target=self._run, name="mainsail-engine", daemon=True)
        self._thread.start()

    async def generate(self, req: EngineRequest) -> AsyncGenerator[RequestOutput, None]:
        """Stream ``req``'s outputs until one is finished; closing the stream aborts it.

        Raises `EngineInputError` for a bad request before anything is yielded.
        """
        if self._stopping:
            raise RuntimeError("engine is shut down")
        self.engine.check_request(req)
        async for out in self._stream(req.request_id, _Add(req), None):
            yield out

    async def adopted(
        self, request_id: str, timeout: float, announced: EngineRequest | None = None
    ) -> AsyncGenerator[RequestOutput, None]:
        """Stream the outputs of a request that another worker is moving here with its KV
        (`Engine.adopt`, run through `call`); `TimeoutError` if it has not arrived and
        produced a token within ``timeout`` seconds. Closing the stream aborts it (and frees
        any of its blocks already received). ``announced`` (the request as the router knows
        it) is checked and hashed now, off the engine thread, so that its adoption — during
        the source's pause — does only the last blocks (`Engine.prepare_adoption`)."""
        if self._stopping:
            raise RuntimeError("engine is shut down")
        with self._lock:
            if request_id in self._awaiting:
                raise EngineInputError(f"request id {request_id!r} is already in use")
            self._awaiting.add(request_id)
        try:
            if announced is not None:
                prepared = await asyncio.to_thread(self.engine.prepare_adoption, announced)
                with self._lock:
                    if request_id in self._awaiting:
                        self._prepared[request_id] = prepared
            async for out in self._stream(request_id, None, timeout):
                yield out
        finally:
            with self._lock:
                self._awaiting.discard(request_id)
                self._prepared.pop(request_id, None)

    def awaits(self, request_id: str) -> bool:
        """Whether an `adopted` stream waits for ``request_id`` (only those may be moved in)."""
        with self._lock:
            return request_id in self._awaiting

    async def adopt(
        self, state: MigratedState, first_block: int = 0, blocks: torch.Tensor | None = None
    ) -> int:
        """Start the moved request ``state`` for the `adopted` stream waiting for it, after
        importing its last ``blocks`` (from ``first_block``; earlier ones came with
        `Engine.import_kv`), all in one call on the engine thread; returns the blocks it
        holds. `MigrationError` if no stream waits any more."""
        rid = state.request.request_id

        def run(engine: Engine) -> int:
            held = engine.import_kv(rid, first_block, blocks) if blocks is not None else 0
            with self._lock:
                if rid not in self._awaiting:
                    raise MigrationError(f"no request {rid!r} waits to be moved here")
                self._awaiting.discard(rid)
                prepared = self._prepared.pop(rid, None)
            try:
                engine.adopt(state, prepared)
            except Exception as exc:
                self._deliver(rid, exc)
                raise
            return held

        return await self.call(run)

    async def call(self, fn: Callable[[Engine], T]) -> T:
        """``fn(engine)``, run on the engine thread between steps (it alone touches the
        engine's state and KV tensors); its exception is raised here."""
        return await asyncio.wrap_future(self.post(fn))

    def post(self, fn: Callable[[Engine], T]) -> concurrent.futures.Future[T]:
        """Like `call`, without waiting (cleanup that must happen even when cancelled)."""
        if self._stopping:
            raise RuntimeError("engine is shut down")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._send(_Call(fn, future))
        return future

    async def _stream(
        self, request_id: str, start: _Add | None, first_timeout: float | None
    ) -> AsyncGenerator[RequestOutput, None]:
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if request_id in self._streams:
                raise EngineInputError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
        if start is not None:
            self._send(start)
        finished = False
        try:
            while True:
                if first_timeout is not None:
                    try:
                        item = await asyncio.wait_for(stream.queue.get(), first_timeout)
                    except TimeoutError:
                        raise TimeoutError(
                            f"request {request_id!r} was not moved here within {first_timeout} s"
                        ) from None
                    first_timeout = None
                else:
                    item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            with self._lock:
                self._streams.pop(request_id, None)
            if not finished:
                self._send(_Abort(request_id))

    def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason "abort"."""
        with self._lock:
            waiting = request_id in self._awaiting
            self._awaiting.discard(request_id)
        if waiting:  # not adopted yet: nothing in the engine will end its stream
            self._deliver(request_id, _aborted(request_id))
        self._send(_Abort(request_id))

    def metrics(self) -> EngineMetrics:
        """The snapshot taken after the latest step, with the KV tier's counters as of now."""
        return self.engine.with_tier_counters(self._metrics)

    async def flush_kv_tier(self, timeout: float) -> bool:
        """Wait (off the event loop) until the blocks handed to the shared KV tier so far are
        stored; False without a tier or on timeout. Used before answering a disaggregated
        prefill, whose decode worker fetches those blocks next."""
        link = self.engine.kv_tier
        if link is None:
            return False
        return await asyncio.to_thread(link.writer.flush, timeout)

    def drain_kv_events(self) -> list[KVEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def kv_tier_snapshot(self) -> list[int] | None:
        """Blocks this worker knows are in its shared tier (None without a tier); the writer
        locks itself, so any thread may ask."""
        link = self.engine.kv_tier
        return None if link is None else link.writer.known()

    def kv_snapshot(self) -> list[int]:
        """Cached block hashes as of the latest step."""
        with self._lock:
            return list(self._snapshot)

    async def shutdown(self) -> None:
        """Stop the loop thread; unfinished streams end with finish_reason "abort"."""
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(self._thread.join)

    def _send(self, command: _Command) -> None:
        self._commands.put(command)
        self._wake.set()

    def _run(self) -> None:
        engine = self.engine
        while not self._stopping:
            self._apply_commands()
            if not engine.has_unfinished():
                self._wake.wait(_IDLE_WAIT_S)
                self._wake.clear()
                # The KV tier's writer finishes after the last step: publish its "stored"
                # events (and fresh metrics) while idle too, not only after the next step.
                self._publish()
                continue
            try:
                outputs = engine.step()
            except EngineFatalError as exc:
                self._fatal(exc)
                continue
            except Exception as exc:
                log.exception("engine step crashed; failing all requests")
                outputs = engine.fail_all(f"{type(exc).__name__}: {exc}")
            self._publish()
            for out in outputs:
                self._deliver(out.request_id, out)
        for seq_id in list(self._streams):
            engine.abort(seq_id)
        for out in engine.step() if engine.has_unfinished() else []:
            self._deliver(out.request_id, out)
        engine.close()

    def _apply_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Add):
                try:
                    self.engine.add_request(command.request)
                except Exception as exc:
                    self._deliver(command.request.request_id, exc)
            elif isinstance(command, _Call):
                if not command.future.set_running_or_notify_cancel():
                    continue
                try:
                    command.future.set_result(command.fn(self.engine))
                except EngineFatalError as exc:  # a rank died under a call, not a step
                    self._fatal(exc)  # first: the caller may look at the worker's end
                    command.future.set_exception(exc)
                except Exception as exc:
                    command.future.set_exception(exc)
            else:
                self.engine.abort(command.request_id)

    def _fatal(self, exc: EngineFatalError) -> None:
        """The engine cannot go on (a rank of a sharded model died), whether a step, a call
        (the expert-load read, a migration) or the idle liveness check found it: the host
        ends the worker so the router moves its requests, as for any dead worker."""
        log.error("engine cannot continue: %s", exc)
        if self.on_fatal is not None:
            self.on_fatal(exc)
        outputs = self.engine.fail_all(f"{type(exc).__name__}: {exc}")
        self._publish()
        for out in outputs:
            self._deliver(out.request_id, out)

    def _publish(self) -> None:
        metrics = self.engine.metrics()
        events = self.engine.drain_kv_events()
        snapshot = self.engine.kv_snapshot() if events else None
        with self._lock:
            self._metrics = metrics
            self._events.extend(events)
            if snapshot is not None:
                self._snapshot = snapshot

    def _deliver(self, request_id: str, item: RequestOutput | BaseException) -> None:
        with self._lock:
            stream = self._streams.get(request_id)
        if stream is None:
            return
        with contextlib.suppress(RuntimeError):
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)


def _aborted(request_id: str) -> RequestOutput:
    return RequestOutput(
        request_id=request_id,
        new_token_ids=[],
        new_text="",
        finished=True,
        finish_reason="abort",
        prompt_tokens=0,
        completion_tokens=0,
        cached_tokens=0,
    )
