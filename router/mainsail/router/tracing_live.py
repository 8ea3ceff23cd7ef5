"""The recording side of `mainsail.router.tracing`: OpenTelemetry spans for one request.

Imported only when tracing is enabled (it imports OpenTelemetry). Spans are parented
explicitly — each trace keeps its current span and a phase nests under it — rather than
through OpenTelemetry's context variables, because a request's phases run in more than one
task (the front's, then the stream consumer's) and generators would leak attached contexts.
Scheduling plugins run in microseconds inside one synchronous pass: the pass is one span made
afterwards from the timings the profile already measures, each plugin's time and result its
attributes (a span per plugin cost more than the pass itself).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from types import TracebackType

from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.errors import RouterError
from mainsail.router.scheduling.types import Decision
from mainsail.router.tracing import NO_PHASE, AttributeValue, Phase, RequestTrace, _LiveFactory
from mainsail.spec.tracing import carrier_from_pairs

_PROPAGATOR = TraceContextTextMapPropagator()
_MAX_LISTED = 16  # candidates listed with their totals on a schedule span (the best ones)
_UNSTARTED = NonRecordingSpan(INVALID_SPAN_CONTEXT)  # the root before `start`


class LiveTracer(_LiveFactory):
    """Makes `LiveTrace`s from one tracer."""

    def __init__(self, tracer: Tracer, block_size: int) -> None:
        self.tracer = tracer
        self.block_size = block_size

    def begin(
        self,
        front: str,
        headers: Iterable[tuple[str | bytes, str | bytes]],
        path: str,
        arrived_ns: int,
    ) -> RequestTrace:
        return LiveTrace(self, front, carrier_from_pairs(headers), path, arrived_ns)


class LivePhase(Phase):
    """A child span of the trace's current span for the duration of a `with` block."""

    __slots__ = ("_name", "_outer", "_span", "_trace")

    recording = True

    def __init__(self, trace: LiveTrace, name: str) -> None:
        self._trace = trace
        self._name = name

    def __enter__(self) -> Phase:
        trace = self._trace
        self._outer = trace.current
        self._span = trace.child(self._name)
        trace.current = self._span
        return self

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            _mark_failed(self._span, exc)
        self._span.end()
        self._trace.current = self._outer


class LiveTrace(RequestTrace):
    """One request's spans (see the tree in `mainsail.router.tracing`)."""

    __slots__ = (
        "_arrived_ns",
        "_carrier",
        "_ended",
        "_front",
        "_idle_since",
        "_kv_move",
        "_passes",
        "_path",
        "current",
        "owner",
        "root",
    )

    def __init__(
        self, owner: LiveTracer, front: str, carrier: dict[str, str], path: str, arrived_ns: int
    ) -> None:
        self.owner = owner
        self._front = front
        self._carrier = carrier
        self._path = path
        self._arrived_ns = arrived_ns
        self._ended = False
        self._passes = 0
        self._idle_since = 0
        self._kv_move: Span | None = None
        self.root: Span = _UNSTARTED
        self.current: Span = self.root

    @property
    def recording(self) -> bool:  # type: ignore[override]
        return self.root.is_recording()

    def start(self) -> None:
        front = self._open_front()
        if front is not None:
            front.end()

    def _open_front(self) -> Span | None:
        """The root span from the request's arrival and its (open) front span; None when the
        trace is not sampled."""
        parent = _PROPAGATOR.extract(self._carrier) if self._carrier else None
        attributes: dict[str, AttributeValue] = {"mainsail.front": self._front}
        if self._path:
            attributes["url.path"] = self._path
        self.root = self.owner.tracer.start_span(
            "mainsail.request",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=self._arrived_ns,
        )
        self.current = self.root
        if not self.root.is_recording():
            return None
        return self.child("mainsail.front", start_time=self._arrived_ns)

    def refused(self, exc: RouterError) -> None:
        if self._ended:
            return
        self._ended = True
        front = self._open_front()
        if front is not None:
            error = exc.code or exc.type
            attributes: dict[str, AttributeValue] = {
                "http.response.status_code": exc.status,
                "error.type": error,
            }
            if exc.param:
                attributes["mainsail.error.param"] = exc.param
            front.set_attributes(attributes)
            # The message is not recorded: a validation message may quote the body.
            where = f" ({exc.param})" if exc.param else ""
            front.set_status(Status(StatusCode.ERROR, f"{exc.status} {error}{where}"))
            front.end()
            self.root.set_attributes(attributes)
        self.root.end()

    def child(self, name: str, start_time: int | None = None) -> Span:
        """A span under the current one."""
        return self.owner.tracer.start_span(
            name, context=set_span_in_context(self.current), start_time=start_time
        )

    def phase(self, name: str) -> Phase:
        if not self.root.is_recording():
            return NO_PHASE
        return LivePhase(self, name)

    def set(self, attributes: Mapping[str, AttributeValue]) -> None:
        self.root.set_attributes(attributes)

    def decision(self, decision: Decision, seconds: float, candidates: int) -> None:
        if not self.root.is_recording():
            return
        end = time.time_ns()
        self._passes += 1
        if decision.worker_id is None:
            if not self._idle_since:
                self._idle_since = end
            self.current.set_attribute("mainsail.scheduling.wait_reason", decision.reason or "")
            return
        begin = end - int(seconds * 1e9)
        if self._idle_since:
            wait = self.child("mainsail.wait", start_time=self._idle_since)
            wait.set_attribute("mainsail.scheduling.passes", self._passes)
            wait.end(end_time=max(self._idle_since, begin))
            self._idle_since = 0
        span = self.child("mainsail.schedule", start_time=begin)
        best = sorted(decision.scores.items(), key=lambda kv: kv[1], reverse=True)[:_MAX_LISTED]
        attributes: dict[str, AttributeValue] = {
            "mainsail.scheduling.candidates": candidates,
            "mainsail.scheduling.chosen_worker": decision.worker_id,
            "mainsail.scheduling.passes": self._passes,
            "mainsail.scheduling.workers": [w for w, _ in best],
            "mainsail.scheduling.totals": [float(t) for _, t in best],
        }
        # Each plugin's time and result as attributes of the pass (plugins take microseconds;
        # a span each would cost more than the pass itself).
        for timing in decision.timings:
            prefix = f"mainsail.{timing.kind}.{timing.name}"
            attributes[f"{prefix}.seconds"] = timing.seconds
            if timing.kept is not None:
                attributes[f"{prefix}.kept"] = timing.kept
            if timing.kind == "scorer":
                score = decision.components.get(timing.name)
                if score is not None:
                    attributes[f"{prefix}.score"] = float(score)
        span.set_attributes(attributes)
        span.end(end_time=end)

    def attempt(self, worker_id: str, role: str, hit_blocks: int, work: pb.WorkerRequest) -> None:
        if not self.root.is_recording():
            # Unsampled: the worker still learns the decision (so it records nothing either).
            if self.root.get_span_context().is_valid:
                _PROPAGATOR.inject(work.trace_context, context=set_span_in_context(self.root))
            return
        span = self.current
        span.set_attributes(
            {
                "mainsail.worker_id": worker_id,
                "mainsail.pool": role or "unified",
                "mainsail.expected_hit_blocks": hit_blocks,
            }
        )
        work.trace_context.clear()
        _PROPAGATOR.inject(work.trace_context, context=set_span_in_context(span))

    def failed_attempt(self, worker_id: str, error: str) -> None:
        if self.root.is_recording():
            self.current.add_event(
                "worker failed before its first token",
                {"mainsail.worker_id": worker_id, "error.message": error[:256]},
            )

    def kv_move_started(self, source: str, target: str, announce: pb.WorkerRequest) -> None:
        if not self.root.is_recording():
            return
        self.kv_move_ended(False)
        span = self.owner.tracer.start_span(
            "mainsail.migration",
            context=set_span_in_context(self.root),  # its own task: not under `current`
            attributes={
                "mainsail.migration.reason": "kv",
                "mainsail.migration.from_worker": source,
                "mainsail.worker_id": target,
            },
        )
        self._kv_move = span
        announce.trace_context.clear()
        _PROPAGATOR.inject(announce.trace_context, context=set_span_in_context(span))

    def kv_move_ended(self, moved: bool) -> None:
        span, self._kv_move = self._kv_move, None
        if span is not None:
            span.set_attribute("mainsail.migration.moved", moved)
            span.end()

    def fail(self, exc: BaseException) -> None:
        if self._ended:
            return
        self._ended = True
        if self.root is _UNSTARTED:
            return
        _mark_failed(self.root, exc)
        self.root.end()

    def finish(self, last: pb.TokenChunk | None, worker_id: str, finished: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self.kv_move_ended(False)
        root = self.root
        if root.is_recording():
            attributes: dict[str, AttributeValue] = {
                "mainsail.worker_id": worker_id,
                "mainsail.finished": finished,  # False: the client went away or the worker
            }  # closed the stream without a finish reason
            if last is not None and finished:
                usage = last.usage
                attributes.update(
                    {
                        "gen_ai.response.finish_reasons": [last.finish_reason],
                        "gen_ai.usage.input_tokens": usage.prompt_tokens,
                        "gen_ai.usage.output_tokens": usage.completion_tokens,
                        "mainsail.cached_tokens": usage.cached_tokens,
                        "mainsail.cache_hit_blocks": usage.cached_tokens // self.owner.block_size,
                    }
                )
                if last.finish_reason == "error":
                    root.set_status(Status(StatusCode.ERROR, last.error[:256]))
            root.set_attributes(attributes)
        root.end()


def _mark_failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, RouterError):
        span.set_attribute("http.response.status_code", exc.status)
        if exc.status < 500:  # the client's mistake: not a server error (OTel semconv)
            return
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:256]))
