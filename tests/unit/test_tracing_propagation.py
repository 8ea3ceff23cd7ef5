"""Trace context handling: what is read from a client, what travels to a worker, and the
tracing settings. The full span tree of a real request is in tests/integration/test_tracing.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from support.tracing import ON, MemoryTracing, parent_id, span_id, trace_id

from mainsail.cli.defaults import TINY_DEPLOYMENT
from mainsail.cli.router_cmd import router_config_from_document
from mainsail.operator.desired_config import deployment_config
from mainsail.operator.naming import Owner
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.settings import RouterConfig
from mainsail.router.tracing import NO_TRACE, RouterTracing
from mainsail.spec.config_document import DeploymentDocument
from mainsail.spec.deployment import ModelDeployment
from mainsail.spec.tracing import (
    MAX_TRACESTATE,
    Tracing,
    bounded_carrier,
    carrier_from_pairs,
)
from mainsail.workers.cluster_supervisor import spec_factory
from mainsail.workers.engine import RequestOutput
from mainsail.workers.tracing import WorkerTracing

pytestmark = pytest.mark.unit

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE}-{PARENT}-01"
UNSAMPLED = f"00-{TRACE}-{PARENT}-00"


def test_carrier_reads_only_the_trace_context_from_http_headers() -> None:
    headers = [
        (b"authorization", b"Bearer sk-secret"),
        (b"traceparent", SAMPLED.encode()),
        (b"tracestate", b"vendor=abc"),
        (b"traceparent", b"00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01"),
    ]
    assert carrier_from_pairs(headers) == {"traceparent": SAMPLED, "tracestate": "vendor=abc"}


def test_carrier_reads_grpc_metadata_case_insensitively() -> None:
    metadata = [("authorization", "Bearer sk-secret"), ("TraceParent", SAMPLED)]
    assert carrier_from_pairs(metadata) == {"traceparent": SAMPLED}


def test_carrier_drops_values_beyond_the_w3c_bounds() -> None:
    long_parent = SAMPLED + "-" + "0" * 100
    long_state = "k=" + "v" * MAX_TRACESTATE
    assert carrier_from_pairs([("traceparent", long_parent), ("tracestate", long_state)]) == {}
    assert bounded_carrier({"traceparent": SAMPLED, "x-other": "1"}) == {"traceparent": SAMPLED}


def test_settings_need_an_endpoint_when_enabled() -> None:
    with pytest.raises(ValidationError, match="endpoint"):
        Tracing(enabled=True)
    with pytest.raises(ValidationError, match="endpoint"):
        Tracing.model_validate({"enabled": True, "endpoint": "grpc://collector:4317"})
    with pytest.raises(ValidationError, match=r"sampleRatio|sample_ratio"):
        Tracing.model_validate({"sampleRatio": 1.5})
    with pytest.raises(ValidationError, match="extra"):
        Tracing.model_validate({"enabled": False, "headers": "x"})
    assert Tracing().enabled is False


def test_deployment_tracing_reaches_the_router_config() -> None:
    deployment = ModelDeployment.model_validate(
        {
            "metadata": {"name": "tiny"},
            "spec": {
                "model": {"name": "tiny", "generate": "llama"},
                "tracing": {
                    "enabled": True,
                    "endpoint": "https://otel.example:4317",
                    "sampleRatio": 0.25,
                },
            },
        }
    )
    config = RouterConfig.from_deployment(deployment, model_dir=Path("/m"))
    assert config.tracing == deployment.spec.tracing
    assert config.tracing.sample_ratio == 0.25


def test_disabled_tracing_builds_no_provider_and_records_nothing() -> None:
    memory = MemoryTracing()
    tracing = RouterTracing(Tracing(), memory.factory)
    trace = tracing.begin("http", [(b"traceparent", SAMPLED.encode())])
    assert trace is NO_TRACE
    trace.start()
    with trace.phase("mainsail.prepare") as phase:
        phase.set("k", "v")
    work = pb.WorkerRequest(request_id="r")
    trace.attempt("w0", "unified", 1, work)
    trace.finish(None, "w0", False)
    assert memory.calls == 0
    assert memory.spans() == []
    assert dict(work.trace_context) == {}


def test_router_continues_the_clients_trace_and_hands_it_to_the_worker() -> None:
    memory = MemoryTracing()
    tracing = RouterTracing(ON, memory.factory)
    trace = tracing.begin("http", [(b"traceparent", SAMPLED.encode())], "/v1/completions")
    trace.start()
    work = pb.WorkerRequest(request_id="r")
    with trace.phase("mainsail.dispatch"):
        trace.attempt("w0", "unified", 3, work)
    chunk = pb.TokenChunk(finish_reason="stop")
    chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.cached_tokens = 40, 5, 32
    trace.finish(chunk, "w0", True)

    root = memory.one("mainsail.request")
    dispatch = memory.one("mainsail.dispatch")
    assert trace_id(root) == int(TRACE, 16)
    assert parent_id(root) == int(PARENT, 16)
    assert parent_id(dispatch) == span_id(root)
    assert parent_id(memory.one("mainsail.front")) == span_id(root)
    assert dispatch.attributes is not None and dispatch.attributes["mainsail.worker_id"] == "w0"
    assert dispatch.attributes["mainsail.expected_hit_blocks"] == 3
    # The worker gets the dispatch span as its parent.
    sent = work.trace_context["traceparent"]
    assert sent == f"00-{TRACE}-{span_id(dispatch):016x}-01"
    assert root.attributes is not None
    assert root.attributes["gen_ai.usage.output_tokens"] == 5
    assert root.attributes["mainsail.cache_hit_blocks"] == 2
    assert memory.resources[0]["service.name"] == "mainsail-router"


def test_an_unsampled_client_trace_records_nothing_but_still_propagates() -> None:
    memory = MemoryTracing()
    trace = RouterTracing(ON, memory.factory).begin("grpc", [("traceparent", UNSAMPLED)])
    trace.start()
    work = pb.WorkerRequest(request_id="r")
    with trace.phase("mainsail.dispatch"):
        trace.attempt("w0", "unified", 0, work)
    trace.finish(None, "w0", False)
    assert memory.spans() == []
    assert work.trace_context["traceparent"].startswith(f"00-{TRACE}-")
    assert work.trace_context["traceparent"].endswith("-00")


def test_a_malformed_traceparent_starts_a_new_trace() -> None:
    memory = MemoryTracing()
    trace = RouterTracing(ON, memory.factory).begin("http", [(b"traceparent", b"00-zz-zz-01")])
    trace.start()
    trace.finish(None, "", False)
    root = memory.one("mainsail.request")
    assert root.parent is None


def _worker(memory: MemoryTracing) -> WorkerTracing:
    return WorkerTracing(
        ON, memory.factory, worker_id="w7", role="decode", model="tiny", block_size=16
    )


def _output(first: tuple[float, float] | None, finished: bool) -> RequestOutput:
    return RequestOutput(
        request_id="r",
        new_token_ids=[1],
        new_text="",
        finished=finished,
        finish_reason="length" if finished else None,
        prompt_tokens=40,
        completion_tokens=3,
        cached_tokens=16,
        first_token_phases=first,
    )


def test_worker_spans_are_children_of_the_routers_context_with_ordered_phases() -> None:
    memory = MemoryTracing()
    request = pb.WorkerRequest(request_id="r", prompt_token_ids=[1] * 40)
    request.trace_context["traceparent"] = SAMPLED
    spans = _worker(memory).begin(request)
    assert spans is not None
    spans.output(_output((0.002, 0.001), finished=False))
    spans.output(_output(None, finished=True))

    root = memory.one("mainsail.worker.request")
    assert trace_id(root) == int(TRACE, 16) and parent_id(root) == int(PARENT, 16)
    phases = [memory.one(f"mainsail.worker.{p}") for p in ("queue", "prefill", "decode")]
    for phase in phases:
        assert parent_id(phase) == span_id(root)
        assert phase.start_time is not None and phase.end_time is not None
        assert root.start_time is not None and root.end_time is not None
        assert root.start_time <= phase.start_time <= phase.end_time <= root.end_time
    queue, prefill, decode = phases
    assert queue.end_time == prefill.start_time and prefill.end_time == decode.start_time
    assert root.attributes is not None
    assert root.attributes["mainsail.cache_hit_blocks"] == 1
    assert root.attributes["mainsail.worker_id"] == "w7"
    assert root.attributes["mainsail.pool"] == "decode"


def test_worker_reads_grpc_metadata_when_the_request_carries_no_context() -> None:
    memory = MemoryTracing()
    spans = _worker(memory).begin(pb.WorkerRequest(request_id="r"), [("traceparent", SAMPLED)])
    assert spans is not None
    spans.end(error="boom")
    root = memory.one("mainsail.worker.request")
    assert parent_id(root) == int(PARENT, 16)
    assert root.status.description == "boom"


def test_worker_records_nothing_for_an_unsampled_trace() -> None:
    memory = MemoryTracing()
    request = pb.WorkerRequest(request_id="r")
    request.trace_context["traceparent"] = UNSAMPLED
    assert _worker(memory).begin(request) is None
    assert memory.spans() == []


def test_the_operators_document_carries_tracing_to_router_and_cluster_workers() -> None:
    raw = yaml.safe_load(TINY_DEPLOYMENT)
    raw["spec"]["tracing"] = {"enabled": True, "endpoint": "http://otel:4317", "sampleRatio": 0.5}
    deployment = ModelDeployment.model_validate(raw)
    doc = deployment_config(Owner(name="tiny", namespace="d", uid="u"), deployment.spec, [])
    assert router_config_from_document(doc).tracing == deployment.spec.tracing
    make = spec_factory(DeploymentDocument.model_validate(doc))
    assert make("unified", 0).tracing == deployment.spec.tracing
