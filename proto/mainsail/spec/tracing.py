"""OpenTelemetry tracing: the deployment's settings, the trace-context carrier and the one
tracer-provider factory the router and the workers share.

Why here: the router and the workers must agree on how a request's trace context travels
between them (the W3C `traceparent` / `tracestate` pair, in `WorkerRequest.trace_context`,
because one `SubmitMany` stream carries many requests and gRPC metadata is per stream; on
`Worker.Submit` and the client fronts it is the request's own headers / metadata) and on how
spans leave the process (OTLP over gRPC, batched). Both are written once, here.

Nothing here imports OpenTelemetry at module level: with tracing off (the default) no
component imports it at all, so the `tracing` extra is optional and costs nothing unused.
Trace context from a client is bounded (`MAX_TRACEPARENT` / `MAX_TRACESTATE` characters) and
only those two keys are read; a malformed value starts a new trace rather than failing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_KEYS = (TRACEPARENT, TRACESTATE)
MAX_TRACEPARENT = 55  # version 00: 2 + 1 + 32 + 1 + 16 + 1 + 2 characters
MAX_TRACESTATE = 512  # the W3C limit a vendor may truncate to

ROUTER_SERVICE = "mainsail-router"
WORKER_SERVICE = "mainsail-worker"


class Tracing(BaseModel):
    """Where the router and workers send OpenTelemetry traces (OTLP over gRPC).

    Off by default; when off, no span is created and OpenTelemetry is not even imported.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    enabled: bool = Field(False, description="Export a trace of every sampled request.")
    endpoint: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://[A-Za-z0-9._\-\[\]:]+(/.*)?$",
        description="OTLP/gRPC collector, e.g. `http://otel-collector.observability:4317`; "
        "`https://` verifies the collector's certificate with the system roots, `http://` "
        "sends in plain text. Required when `enabled`.",
    )
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Fraction of new traces recorded (by trace id). A request whose client "
        "sent a sampled `traceparent` follows the client's decision.",
    )
    export_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Longest one OTLP export call may take before it is dropped.",
    )

    @model_validator(mode="after")
    def _endpoint_when_enabled(self) -> Tracing:
        if self.enabled and not self.endpoint:
            raise ValueError("tracing: `endpoint` is required when `enabled` is true")
        return self


ProviderFactory = Callable[[Tracing, Mapping[str, str]], "TracerProvider"]
"""Builds the tracer provider of one process from the settings and its resource attributes
(`service.name`, ...). The seam tests use to put an in-memory exporter in its place."""


def otlp_provider(settings: Tracing, resource: Mapping[str, str]) -> TracerProvider:
    """The production provider: OTLP/gRPC exporter behind a batch processor (spans leave the
    request path at once; a background thread exports them), parent-based ratio sampling."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    endpoint = settings.endpoint or ""
    provider = SdkTracerProvider(
        resource=Resource.create(dict(resource)),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        insecure=endpoint.startswith("http://"),
        timeout=settings.export_timeout_seconds,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def carrier_from_pairs(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """The trace context among a request's headers (HTTP, bytes) or gRPC metadata (str):
    `traceparent` and `tracestate` only, first value of each, names case-insensitive, values
    longer than the W3C bounds dropped (so a client cannot make spans arbitrarily large)."""
    out: dict[str, str] = {}
    for raw_key, raw_value in pairs:
        key = raw_key.decode("latin-1") if isinstance(raw_key, bytes) else raw_key
        key = key.lower()
        if key not in TRACE_KEYS or key in out:
            continue
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        limit = MAX_TRACEPARENT if key == TRACEPARENT else MAX_TRACESTATE
        if len(value) <= limit:
            out[key] = value.strip()
    return out


def bounded_carrier(carrier: Mapping[str, str]) -> dict[str, str]:
    """`carrier_from_pairs` for a mapping (a `WorkerRequest.trace_context`)."""
    return carrier_from_pairs(carrier.items())
