"""A worker's request spans (OpenTelemetry): one per request, with its queue, prefill and
decode phases as children.

Imported only when the worker's `spec.tracing` is enabled (it imports OpenTelemetry; the
service holds None otherwise and does no tracing work at all). The request span continues the
router's trace: its parent is the context in `WorkerRequest.trace_context` (set by the
router's dispatch), or for a direct `Worker.Submit` the caller's `traceparent` metadata. The
engine hands over two durations with the first token (`RequestOutput.first_token_phases`), so
the phase spans are made once, when the request ends, with explicit times: nothing per token.

    mainsail.worker.request   (SERVER)
    ├── mainsail.worker.queue     arrival to the first engine step that ran it
    ├── mainsail.worker.prefill   that step to the first token
    └── mainsail.worker.decode    first token to the last

A request moved here with its KV (`WorkerRequest.adopt`, announced by the router under its
`mainsail.migration` span) has no queue or prefill here; its phases are

    mainsail.worker.request   (SERVER, `mainsail.adopted`)
    ├── mainsail.worker.adopt     announced to its first token here: the source's stages, the
    │                             import, the adoption and the first step
    └── mainsail.worker.decode    that token to the last

and the move itself is traced on both workers, under the router's migration span (its context
travels as `traceparent` metadata on `Worker.Migrate`, and from the source on `ReceiveKV`):

    mainsail.worker.migrate   source: stages, blocks, pause, accepted (or why not)
    └── mainsail.worker.receive_kv   target: blocks held, adopted
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.spec.tracing import (
    WORKER_SERVICE,
    ProviderFactory,
    Tracing,
    bounded_carrier,
    carrier_from_pairs,
    otlp_provider,
)
from mainsail.workers.engine import RequestOutput

_PROPAGATOR = TraceContextTextMapPropagator()


class WorkerTracing:
    """The worker's tracer seam: ``factory`` builds the provider (default OTLP export)."""

    def __init__(
        self,
        settings: Tracing,
        factory: ProviderFactory | None = None,
        *,
        worker_id: str,
        role: str,
        model: str,
        block_size: int,
    ) -> None:
        resource = {
            "service.name": WORKER_SERVICE,
            "service.instance.id": worker_id,
            "mainsail.model": model,
            "mainsail.pool": role,
        }
        self.provider = (factory or otlp_provider)(settings, resource)
        self.tracer: Tracer = self.provider.get_tracer("mainsail.workers")
        self.attributes = {
            "mainsail.worker_id": worker_id,
            "mainsail.pool": role,
            "gen_ai.request.model": model,
        }
        self.block_size = block_size

    def begin(
        self, request: pb.WorkerRequest, metadata: Iterable[tuple[str, str | bytes]] = ()
    ) -> RequestSpans | None:
        """The spans of ``request`` (None when its trace is not sampled: nothing to record)."""
        carrier = bounded_carrier(request.trace_context) or carrier_from_pairs(metadata)
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        start_ns = time.time_ns()
        span = self.tracer.start_span(
            "mainsail.worker.request",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=start_ns,
            attributes={
                **self.attributes,
                "mainsail.request_id": request.request_id,
                "mainsail.prompt_tokens": len(request.prompt_token_ids),
                "mainsail.sampled_before": request.sampled_before,
                "mainsail.kv_publish": request.kv_publish,
            },
        )
        if not span.is_recording():
            return None
        if request.adopt:
            span.set_attribute("mainsail.adopted", True)
        return RequestSpans(self, span, start_ns, adopt=request.adopt)

    def move_span(
        self,
        name: str,
        metadata: Iterable[tuple[str, str | bytes]],
        attributes: Mapping[str, str | int | bool] | None = None,
    ) -> Span | None:
        """A span of a KV move (`Migrate` on the source, `ReceiveKV` on the target), child of
        the trace context in the call's ``metadata``. None without one (a move belongs to a
        request's trace; alone it would be an orphan trace) or when it is not sampled."""
        carrier = carrier_from_pairs(metadata)
        if not carrier:
            return None
        span = self.tracer.start_span(
            name,
            context=_PROPAGATOR.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={**self.attributes, **(attributes or {})},
        )
        return span if span.is_recording() else None

    @staticmethod
    def context_of(span: Span | None) -> list[tuple[str, str]]:
        """``span``'s trace context as gRPC metadata (empty for None)."""
        if span is None:
            return []
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=set_span_in_context(span))
        return list(carrier.items())

    def shutdown(self) -> None:
        """Flush and stop the exporter."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()


class RequestSpans:
    """One request's spans on this worker; `output` needs its first and last outputs only
    (`wants` says which)."""

    __slots__ = ("_adopt", "_ended", "_first_ns", "_owner", "_phases", "_start_ns", "span")

    def __init__(
        self, owner: WorkerTracing, span: Span, start_ns: int, adopt: bool = False
    ) -> None:
        self._owner = owner
        self.span = span
        self._adopt = adopt  # moved here with its KV: adopt + decode phases
        self._start_ns = start_ns  # the request span's start
        self._first_ns = 0
        self._phases: tuple[float, float] | None = None
        self._ended = False

    def wants(self, out: RequestOutput) -> bool:
        """Whether `output` needs ``out`` (so callers skip the call for every other token)."""
        return (
            out.finished
            or out.first_token_phases is not None
            or (self._adopt and not self._first_ns)
        )

    def output(self, out: RequestOutput) -> None:
        """Called with the output carrying the first token and with the finished one."""
        if not self._first_ns:
            if out.first_token_phases is not None:
                self._first_ns = time.time_ns()
                self._phases = out.first_token_phases
            elif self._adopt:  # the first token generated here after the move
                self._first_ns = time.time_ns()
        if out.finished:
            self.end(out)

    def end(self, out: RequestOutput | None = None, error: str = "") -> None:
        """Ends the request's span (and makes its phase spans); later calls do nothing."""
        if self._ended:
            return
        self._ended = True
        end_ns = time.time_ns()
        span = self.span
        if self._first_ns and self._adopt:
            self._phase("mainsail.worker.adopt", self._start_ns, self._first_ns)
            self._phase("mainsail.worker.decode", self._first_ns, end_ns)
        elif self._first_ns and self._phases is not None:
            queued, prefill = self._phases
            prefill_start = max(self._start_ns, self._first_ns - int(prefill * 1e9))
            queue_start = max(self._start_ns, prefill_start - int(queued * 1e9))
            self._phase("mainsail.worker.queue", queue_start, prefill_start)
            self._phase("mainsail.worker.prefill", prefill_start, self._first_ns)
            self._phase("mainsail.worker.decode", self._first_ns, end_ns)
        if out is not None:
            span.set_attributes(_usage(out, self._owner.block_size))
            if out.finish_reason == "error":
                error = out.error or "engine error"
        if error:
            span.set_status(Status(StatusCode.ERROR, error[:256]))
        span.end(end_time=end_ns)

    def _phase(self, name: str, start_ns: int, end_ns: int) -> None:
        child = self._owner.tracer.start_span(
            name, context=set_span_in_context(self.span), start_time=start_ns
        )
        child.end(end_time=max(start_ns, end_ns))


def _usage(out: RequestOutput, block_size: int) -> Mapping[str, str | int | list[str]]:
    return {
        "gen_ai.response.finish_reasons": [out.finish_reason or ""],
        "gen_ai.usage.input_tokens": out.prompt_tokens,
        "gen_ai.usage.output_tokens": out.completion_tokens,
        "mainsail.cached_tokens": out.cached_tokens,
        "mainsail.cache_hit_blocks": out.cached_tokens // block_size,
    }
