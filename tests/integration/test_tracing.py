"""Request traces across the router and real workers (real engine on the generated tiny
checkpoint), read from the SDK's in-memory exporter: one for the router, one for the workers,
so what the worker's spans hang under came across the wire, not through a shared context.

Checked: the span tree of one HTTP request continuing the client's `traceparent` (front,
prepare, admission, dispatch with the scheduling pass and each plugin, the worker's request
with queue, prefill and decode), its attributes (model, pool, worker, request id, tokens in and
out, cache hit blocks, chosen worker and scores), the gRPC front's metadata, live migrations
(with the KV: the target's adopt and decode phases, the source's and target's move spans; and
by recompute), a request refused while parsed, that no prompt text or API key reaches any
span, and that tracing off records nothing.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from support.tracing import ON, MemoryTracing, parent_id, span_id, trace_id

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.front.auth import Credentials
from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.tracing import Tracing
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

pytestmark = pytest.mark.integration

KEY = "sk-tracing-test-key-5f3a"
WORKER = WorkerCredential(token=secrets.token_hex(32))
MARKER = "zebra quokka marmalade"  # must never appear in a span
TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


class Traced:
    def __init__(self, router: RouterServer, workers: list[WorkerHost]) -> None:
        self.router = router
        self.workers = workers
        self.http = f"http://127.0.0.1:{router.http_port}"
        self.grpc = f"127.0.0.1:{router.grpc_port}"


@asynccontextmanager
async def traced_fleet(
    model_dir: Path,
    workers: int,
    router_memory: MemoryTracing,
    worker_memory: MemoryTracing,
    tracing: Tracing = ON,
) -> AsyncIterator[Traced]:
    config = RouterConfig(
        model_name="tiny",
        model_dir=model_dir,
        http_port=0,
        grpc_port=0,
        fleet_port=0,
        max_model_len=1024,
        tracing=tracing,
    )
    router = RouterServer(
        config,
        credentials=Credentials(api_keys=frozenset({KEY})),
        worker_credential=WORKER,
        tracer_provider_factory=router_memory.factory,
    )
    hosts: list[WorkerHost] = []
    try:
        await router.start()
        for i in range(workers):
            spec = WorkerSpec(
                worker_id=f"w{i}",
                model_name="tiny",
                model_dir=model_dir,
                engine=EngineSettings(max_model_len=1024),
                router_address=f"127.0.0.1:{router.fleet_port}",
                metrics_port=None,
                tracing=tracing,
            )
            host = WorkerHost(spec, WORKER, tracer_provider_factory=worker_memory.factory)
            hosts.append(host)
            await host.start()
            await host.wait_registered(30)
        yield Traced(router, hosts)
    finally:
        for host in hosts:
            await host.stop()
        await router.stop()


def _attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def _everything_recorded(spans: list[ReadableSpan]) -> str:
    """Every name, attribute, event and resource value of ``spans`` as one string."""
    parts: list[str] = []
    for span in spans:
        parts.append(span.name)
        parts.extend(f"{k}={v!r}" for k, v in (span.attributes or {}).items())
        for event in span.events:
            parts.append(event.name)
            parts.extend(f"{k}={v!r}" for k, v in (event.attributes or {}).items())
        parts.extend(f"{k}={v!r}" for k, v in span.resource.attributes.items())
        parts.append(span.status.description or "")
    return "\n".join(parts)


async def _chat(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"Tell me about the {MARKER}. " * 6}],
        "max_tokens": 8,
        "temperature": 0,
    }
    resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status_code == 200, resp.text
    return resp


async def test_one_request_traced_across_router_and_worker(tiny_model_dir: Path) -> None:
    router_memory, worker_memory = MemoryTracing(), MemoryTracing()
    async with (
        traced_fleet(tiny_model_dir, 1, router_memory, worker_memory) as fleet,
        httpx.AsyncClient(base_url=fleet.http, timeout=60) as client,
    ):
        headers = {
            "Authorization": f"Bearer {KEY}",
            "traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01",
        }
        first = await _chat(client, headers)
        second = await _chat(client, {"Authorization": f"Bearer {KEY}"})  # same prompt: cached

    spans = router_memory.spans()
    roots = router_memory.named("mainsail.request")
    assert len(roots) == 2
    root = next(r for r in roots if trace_id(r) == int(TRACE, 16))
    assert parent_id(root) == int(CLIENT_SPAN, 16)  # the client's traceparent is honoured
    mine = [s for s in spans if trace_id(s) == int(TRACE, 16)]
    by_name = {s.name: s for s in mine}
    for phase in ("mainsail.front", "mainsail.prepare", "mainsail.dispatch"):
        assert parent_id(by_name[phase]) == span_id(root), phase
    dispatch = by_name["mainsail.dispatch"]
    assert parent_id(by_name["mainsail.admission"]) == span_id(dispatch)  # before queueing
    schedule = by_name["mainsail.schedule"]
    assert parent_id(schedule) == span_id(dispatch)
    assert not [s for s in mine if parent_id(s) == span_id(schedule)]
    profile = fleet.router.config.profile  # every configured plugin: its time and result
    passed = _attrs(schedule)
    for name in profile.filters:
        assert float(str(passed[f"mainsail.filter.{name}.seconds"])) >= 0
        assert passed[f"mainsail.filter.{name}.kept"] == 1
    for scorer in profile.scorers:
        assert float(str(passed[f"mainsail.scorer.{scorer.name}.seconds"])) >= 0
        assert 0.0 <= float(str(passed[f"mainsail.scorer.{scorer.name}.score"])) <= 1.0
    assert float(str(passed[f"mainsail.picker.{profile.picker}.seconds"])) >= 0
    assert _attrs(schedule)["mainsail.scheduling.chosen_worker"] == "w0"
    assert list(_attrs(schedule)["mainsail.scheduling.workers"]) == ["w0"]  # type: ignore[call-overload]

    usage = first.json()["usage"]
    attrs = _attrs(root)
    assert attrs["gen_ai.request.model"] == "tiny"
    assert attrs["mainsail.request_id"] == first.headers["x-request-id"]
    assert attrs["mainsail.worker_id"] == first.headers["x-mainsail-worker"] == "w0"
    assert attrs["mainsail.pool"] == "unified"
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 8
    assert _attrs(dispatch)["mainsail.worker_id"] == "w0"

    # The worker's spans continue the same trace under the router's dispatch span.
    worker_root = next(
        s for s in worker_memory.named("mainsail.worker.request") if trace_id(s) == int(TRACE, 16)
    )
    assert parent_id(worker_root) == span_id(dispatch)
    assert _attrs(worker_root)["mainsail.request_id"] == first.headers["x-request-id"]
    assert _attrs(worker_root)["gen_ai.usage.output_tokens"] == 8
    phases = {s.name: s for s in worker_memory.spans() if parent_id(s) == span_id(worker_root)}
    assert set(phases) == {
        "mainsail.worker.queue",
        "mainsail.worker.prefill",
        "mainsail.worker.decode",
    }
    assert worker_root.resource.attributes["service.name"] == "mainsail-worker"
    assert root.resource.attributes["service.name"] == "mainsail-router"

    # The second request (no traceparent: a new trace) hit the first one's cached blocks.
    second_root = next(r for r in roots if r is not root)
    assert _attrs(second_root)["mainsail.request_id"] == second.headers["x-request-id"]
    cached = second.json()["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)
    assert int(str(_attrs(second_root)["mainsail.cached_tokens"])) == cached > 0
    assert int(str(_attrs(second_root)["mainsail.cache_hit_blocks"])) == cached // 16 >= 1

    # Neither the prompt nor the API key reaches any span, on either side.
    recorded = _everything_recorded(spans + worker_memory.spans())
    assert MARKER not in recorded and "quokka" not in recorded
    assert KEY not in recorded


async def _migrated_request(
    fleet: Traced, stub: pb_grpc.InferenceStub, kv: bool
) -> tuple[str, list[str]]:
    """One streamed gRPC request (client trace context in its metadata) moved to the other
    worker after its first chunk; its id and the workers that streamed it, in order."""
    request = pb.GenerateRequest(
        model="tiny",
        prompt=f"Once upon a time the {MARKER}",
        sampling=pb.SamplingParams(max_tokens=300, ignore_eos=True, temperature=0),
    )
    metadata = (
        ("authorization", f"Bearer {KEY}"),
        ("traceparent", f"00-{TRACE}-{CLIENT_SPAN}-01"),
    )
    workers: list[str] = []
    tokens = 0
    request_id = ""
    async for response in stub.Generate(request, metadata=metadata, timeout=120):
        if not workers:  # first chunk in hand: move the request to the other worker
            request_id = response.request_id
            assert await fleet.router.router.migrate(request_id, kv=kv)
        if not workers or response.worker_id != workers[-1]:
            workers.append(response.worker_id)
        tokens += len(response.token_ids)
    assert tokens == 300
    assert len(set(workers)) == 2, workers
    return request_id, workers


async def test_grpc_metadata_and_live_migrations(tiny_model_dir: Path) -> None:
    router_memory, worker_memory = MemoryTracing(), MemoryTracing()
    async with (
        traced_fleet(tiny_model_dir, 2, router_memory, worker_memory) as fleet,
        grpc.aio.insecure_channel(fleet.grpc) as channel,
    ):
        stub = pb_grpc.InferenceStub(channel)
        kv_id, kv_workers = await _migrated_request(fleet, stub, kv=True)
        re_id, re_workers = await _migrated_request(fleet, stub, kv=False)

    roots = {
        str(_attrs(r)["mainsail.request_id"]): r for r in router_memory.named("mainsail.request")
    }
    for rid in (kv_id, re_id):
        root = roots[rid]
        assert trace_id(root) == int(TRACE, 16) and parent_id(root) == int(CLIENT_SPAN, 16)
        assert _attrs(root)["mainsail.front"] == "grpc"
        assert _attrs(root)["gen_ai.usage.output_tokens"] == 300
    migrations = {
        str(_attrs(m)["mainsail.migration.reason"]): m
        for m in router_memory.named("mainsail.migration")
    }
    workers = {
        (str(_attrs(s)["mainsail.request_id"]), str(_attrs(s)["mainsail.worker_id"])): s
        for s in worker_memory.named("mainsail.worker.request")
    }

    # With the KV: the target adopts the request; its span hangs under the migration span.
    kv = migrations["kv"]
    assert parent_id(kv) == span_id(roots[kv_id])
    assert _attrs(kv)["mainsail.migration.from_worker"] == kv_workers[0]
    assert _attrs(kv)["mainsail.worker_id"] == kv_workers[1]
    assert _attrs(kv)["mainsail.migration.moved"] is True
    assert parent_id(workers[(kv_id, kv_workers[1])]) == span_id(kv)
    assert _attrs(workers[(kv_id, kv_workers[0])])["gen_ai.response.finish_reasons"] == (
        "migrated",
    )
    # The adopted request's phases on the target: adopt (announced -> its first token there),
    # then decode; no queue or prefill (it was not prefilled there).
    adopted = workers[(kv_id, kv_workers[1])]
    assert _attrs(adopted)["mainsail.adopted"] is True
    phases = {s.name: s for s in worker_memory.spans() if parent_id(s) == span_id(adopted)}
    assert set(phases) == {"mainsail.worker.adopt", "mainsail.worker.decode"}
    adopt, decode = phases["mainsail.worker.adopt"], phases["mainsail.worker.decode"]
    assert adopted.start_time == adopt.start_time and adopt.end_time == decode.start_time
    assert decode.end_time == adopted.end_time
    # The move itself on both workers, under the router's migration span: the trace context
    # went router -> source on Migrate and source -> target on ReceiveKV.
    (out,) = worker_memory.named("mainsail.worker.migrate")
    (into,) = worker_memory.named("mainsail.worker.receive_kv")
    assert trace_id(out) == trace_id(into) == int(TRACE, 16)
    assert parent_id(out) == span_id(kv) and parent_id(into) == span_id(out)
    assert out.resource.attributes["service.instance.id"] == kv_workers[0]
    assert into.resource.attributes["service.instance.id"] == kv_workers[1]
    assert _attrs(out)["mainsail.request_id"] == kv_id
    assert _attrs(out)["mainsail.migration.accepted"] is True
    assert int(str(_attrs(out)["mainsail.migration.stages"])) >= 1
    blocks = int(str(_attrs(out)["mainsail.migration.blocks"]))
    assert blocks >= 1 and float(str(_attrs(out)["mainsail.migration.pause_seconds"])) > 0
    assert _attrs(into)["mainsail.migration.moved"] is True
    assert int(str(_attrs(into)["mainsail.migration.blocks"])) >= 1

    # By recompute: a dispatch under the migration span sends the rest to the other worker.
    recompute = migrations["migrate"]
    assert parent_id(recompute) == span_id(roots[re_id])
    assert _attrs(recompute)["mainsail.migration.from_worker"] == re_workers[0]
    moved = next(
        s for s in router_memory.named("mainsail.dispatch") if parent_id(s) == span_id(recompute)
    )
    assert _attrs(moved)["mainsail.worker_id"] == re_workers[1]
    target = workers[(re_id, re_workers[1])]
    assert parent_id(target) == span_id(moved)
    assert int(str(_attrs(target)["mainsail.sampled_before"])) > 0
    assert _attrs(workers[(re_id, re_workers[0])])["gen_ai.response.finish_reasons"] == ("abort",)

    recorded = _everything_recorded(router_memory.spans() + worker_memory.spans())
    assert "quokka" not in recorded and KEY not in recorded


async def test_tracing_off_records_nothing(tiny_model_dir: Path) -> None:
    router_memory, worker_memory = MemoryTracing(), MemoryTracing()
    async with (
        traced_fleet(tiny_model_dir, 1, router_memory, worker_memory, Tracing()) as fleet,
        httpx.AsyncClient(base_url=fleet.http, timeout=60) as client,
    ):
        headers = {"Authorization": f"Bearer {KEY}", "traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"}
        resp = await _chat(client, headers)
        assert json.loads(resp.text)["usage"]["completion_tokens"] == 8
        assert fleet.workers[0].tracing is None
    assert router_memory.calls == worker_memory.calls == 0
    assert router_memory.spans() == worker_memory.spans() == []


async def test_a_request_refused_while_parsed_leaves_a_failed_front_span(
    tiny_model_dir: Path,
) -> None:
    """Bad JSON, a bad field, a bad header: each 400 is one trace (continuing the client's
    traceparent) whose front span failed with the status, the error type and the field, and
    which holds nothing of the body or the key."""
    router_memory, worker_memory = MemoryTracing(), MemoryTracing()
    headers = {
        "Authorization": f"Bearer {KEY}",
        "traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01",
        "Content-Type": "application/json",
    }
    good = {"model": "tiny", "messages": [{"role": "user", "content": MARKER}]}
    async with (
        traced_fleet(tiny_model_dir, 0, router_memory, worker_memory) as fleet,
        httpx.AsyncClient(base_url=fleet.http, timeout=60) as client,
    ):
        cases = [
            ("/v1/chat/completions", f'{{"messages": "{MARKER}', {}, None),  # not JSON
            ("/v1/chat/completions", json.dumps({**good, "max_tokens": MARKER}), {}, "max_tokens"),
            ("/v1/completions", json.dumps({"model": "tiny", "prompt": MARKER, "n": 0}), {}, "n"),
            (
                "/v1/chat/completions",
                json.dumps(good),
                {"x-mainsail-ttft-ms": "-5"},
                "x-mainsail-ttft-ms",
            ),
        ]
        for path, body, extra, field in cases:
            resp = await client.post(path, content=body, headers={**headers, **extra})
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == field, resp.text

    spans = router_memory.spans()
    roots = router_memory.named("mainsail.request")
    fronts = router_memory.named("mainsail.front")
    assert len(roots) == len(fronts) == len(cases) == len(spans) // 2  # and nothing else
    for (path, _, _, field), root in zip(cases, roots, strict=True):
        front = next(f for f in fronts if parent_id(f) == span_id(root))
        assert trace_id(root) == int(TRACE, 16) and parent_id(root) == int(CLIENT_SPAN, 16)
        assert _attrs(root)["url.path"] == path
        assert _attrs(root)["http.response.status_code"] == 400
        assert _attrs(front)["error.type"] == "invalid_request_error"
        assert _attrs(front).get("mainsail.error.param") == field
        assert not front.status.is_ok and front.status.description is not None
        assert front.status.description.startswith("400 invalid_request_error")
        assert front.start_time is not None and root.start_time == front.start_time
    recorded = _everything_recorded(spans)
    assert "quokka" not in recorded and KEY not in recorded
    assert worker_memory.spans() == []
