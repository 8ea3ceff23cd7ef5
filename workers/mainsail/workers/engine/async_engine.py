"""`AsyncEngine`: an `Engine` driven by one dedicated thread, streamed to asyncio callers.

Why a thread: a step is a blocking torch computation; running it on the event loop would
stall every other request's network I/O. The engine object is touched only by its thread;
callers talk to it through a command queue (add, abort) and receive outputs through one
`asyncio.Queue` per request, fed with `call_soon_threadsafe`. Metrics and KV events are
copied out by the thread after each step, so reading them never races the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from mainsail.workers.engine.engine import Engine
from mainsail.workers.engine.errors import EngineInputError
from mainsail.workers.engine.kv_events import KVEvent
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


_Command = _Add | _Abort


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | BaseException]


class AsyncEngine:
    """Runs ``engine`` on its own thread until `shutdown`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}
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
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if req.request_id in self._streams:
                raise EngineInputError(f"request id {req.request_id!r} is already in use")
            self._streams[req.request_id] = stream
        self._send(_Add(req))
        finished = False
        try:
            while True:
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
                self._streams.pop(req.request_id, None)
            if not finished:
                self._send(_Abort(req.request_id))

    def abort(self, request_id: str) -> None:
        """Stop a request; its stream ends with finish_reason "abort"."""
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
            else:
                self.engine.abort(command.request_id)

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
