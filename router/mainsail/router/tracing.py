"""Request traces (OpenTelemetry) behind one seam: what the request path calls at each phase.

The request path calls a `RequestTrace` at its phase boundaries — `phase("mainsail.prepare")`
as a context manager, `decision(...)` after each scheduling pass, `attempt(...)` when a worker
is booked, `finish(...)` when the stream ends — and never imports OpenTelemetry. With tracing
off (the default) every request gets `NO_TRACE`, whose methods do nothing, so the cost is a
few no-op calls per request and none per token. With tracing on, `RouterTracing` builds the
tracer provider through the injected factory (`mainsail.spec.tracing.ProviderFactory`; OTLP
export in production, an in-memory exporter in tests) and `tracing_live` records the spans.

Span tree of one request (names as exported; docs/observability.md lists the attributes):

    mainsail.request                 (SERVER; child of the client's `traceparent`, if any)
    ├── mainsail.front               arrival to the router's own work (parse, validate);
    │                                failed, naming the field, when the body is refused
    ├── mainsail.prepare             chat template, tokenize, block hashes
    ├── mainsail.dispatch            choose + book + submit + first chunk (all fail-overs)
    │   ├── mainsail.admission       admission and the flow queue (429); new requests only
    │   ├── mainsail.wait            held for capacity (only when the first pass found none)
    │   ├── mainsail.schedule        the scheduling pass that chose: chosen worker, total per
    │   │                            candidate, each plugin's seconds, filters' kept counts and
    │   │                            scorers' scores of the chosen worker (attributes)
    │   └── mainsail.worker.request  (on the worker: queue, prefill, decode)
    └── mainsail.migration           a move to another worker (resume, migrate, handoff)
        ├── mainsail.dispatch        ... as above (a move by recompute)
        ├── mainsail.worker.request  (a move with the KV: the target's adopted request,
        │                            its phases adopt and decode)
        └── mainsail.worker.migrate  (the source's copy; the target's receive_kv under it)

Never recorded: prompt text, messages, generated text, API keys or any header other than the
trace context (tests/integration/test_tracing.py checks every exported attribute).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError
from mainsail.router.scheduling.types import Decision
from mainsail.spec.tracing import ROUTER_SERVICE, ProviderFactory, Tracing, otlp_provider

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

AttributeValue = str | bool | int | float | list[str] | list[float]


class Phase:
    """One phase of a request (a span when tracing); this base records nothing."""

    __slots__ = ()

    recording = False

    def set(self, key: str, value: AttributeValue) -> None:
        """An attribute of this phase's span."""

    def __enter__(self) -> Phase:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NO_PHASE = Phase()


class RequestTrace:
    """One request's trace. This base is the disabled trace: every method does nothing."""

    __slots__ = ()

    recording = False  # True when spans are recorded: callers skip building attributes if not

    def start(self) -> None:
        """The router's own work on the request begins (`Router.open`); ends the front phase."""

    def phase(self, name: str) -> Phase:
        """A child span of the current phase, as a context manager (errors mark it failed)."""
        return NO_PHASE

    def set(self, attributes: Mapping[str, AttributeValue]) -> None:
        """Attributes of the request's root span."""

    def decision(self, decision: Decision, seconds: float, candidates: int) -> None:
        """One scheduling pass took ``seconds`` over ``candidates`` workers and returned
        ``decision`` (its per-plugin timings become child spans when a worker was chosen)."""

    def attempt(self, worker_id: str, role: str, hit_blocks: int, work: pb.WorkerRequest) -> None:
        """A worker was booked for ``work``: named on the dispatch span, and ``work`` carries
        the trace context to it."""

    def failed_attempt(self, worker_id: str, error: str) -> None:
        """The booked worker failed before its first chunk (the dispatch tries another)."""

    def kv_move_started(self, source: str, target: str, announce: pb.WorkerRequest) -> None:
        """A move with the KV began (`moves._move_kv`, in its own task): a migration span
        under the request's root until `kv_move_ended`; ``announce`` (the target's adopt
        request) carries its context."""

    def kv_move_ended(self, moved: bool) -> None:
        """The KV move finished: the target took over (``moved``) or it was given up."""

    def fail(self, exc: BaseException) -> None:
        """The request ended before streaming (4xx/5xx, cancelled): the trace ends here."""

    def refused(self, exc: RouterError) -> None:
        """The front refused the request while parsing it (bad JSON, a bad field, a bad
        header): the root and a failed `mainsail.front` span with the status, error type and
        field (`exc.param`), never the message (it may quote the body). Ends the trace."""

    def finish(self, last: pb.TokenChunk | None, worker_id: str, finished: bool) -> None:
        """The stream ended; ``last`` is its last chunk (usage, finish reason) and
        ``finished`` False when the client went away first."""


NO_TRACE = RequestTrace()


class RouterTracing:
    """The router's tracer seam: `begin` gives each request its trace.

    ``factory`` builds the tracer provider (default: OTLP export, `otlp_provider`); it is
    called once, and only when ``settings.enabled``."""

    def __init__(
        self,
        settings: Tracing,
        factory: ProviderFactory | None = None,
        *,
        resource: Mapping[str, str] | None = None,
        block_size: int = 16,
    ) -> None:
        self.enabled = settings.enabled
        self.provider: TracerProvider | None = None
        self._live: _LiveFactory | None = None
        if self.enabled:
            from mainsail.router.tracing_live import LiveTracer

            attributes = {"service.name": ROUTER_SERVICE, **(resource or {})}
            self.provider = (factory or otlp_provider)(settings, attributes)
            self._live = LiveTracer(self.provider.get_tracer("mainsail.router"), block_size)

    def begin(
        self, front: str, headers: Iterable[tuple[str | bytes, str | bytes]] = (), path: str = ""
    ) -> RequestTrace:
        """A trace for a request that just arrived on ``front`` ("http" or "grpc"), child of
        the trace context in ``headers`` (HTTP headers or gRPC metadata) if there is one.
        Nothing is recorded until `RequestTrace.start`, or `RequestTrace.refused` for a
        request refused while its body is parsed."""
        if self._live is None:
            return NO_TRACE
        return self._live.begin(front, headers, path, time.time_ns())

    def shutdown(self) -> None:
        """Flush and stop the exporter (spans still queued are sent, within its timeout)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


class _LiveFactory:
    """What `tracing_live.LiveTracer` provides (kept abstract so this module needs no OTel)."""

    def begin(
        self,
        front: str,
        headers: Iterable[tuple[str | bytes, str | bytes]],
        path: str,
        arrived_ns: int,
    ) -> RequestTrace:
        raise NotImplementedError
