"""Tracer providers for tests: the SDK's in-memory exporter in place of OTLP export.

`MemoryTracing.factory` is a `mainsail.spec.tracing.ProviderFactory`: hand it to
`RouterServer(tracer_provider_factory=...)` or `WorkerHost(..., tracer_provider_factory=...)`.
Each process part gets its own provider and exporter (as separate processes would), so a test
sees what crossed the wire, not a shared in-process context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from mainsail.spec.tracing import Tracing

ON = Tracing(enabled=True, endpoint="http://127.0.0.1:4317")


@dataclass
class MemoryTracing:
    """Records every span in memory; `calls` counts providers built (0 when tracing is off)."""

    exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    calls: int = 0
    resources: list[dict[str, str]] = field(default_factory=list)

    def factory(self, settings: Tracing, resource: Mapping[str, str]) -> TracerProvider:
        self.calls += 1
        self.resources.append(dict(resource))
        provider = TracerProvider(
            resource=Resource.create(dict(resource)),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        return provider

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (
            f"{len(found)} spans named {name!r}: {[s.name for s in self.spans()]}"
        )
        return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def trace_id(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id
