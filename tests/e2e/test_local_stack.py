"""End to end: `mainsail up` as a user runs it, driven by the real `openai` SDK and gRPC.

One stack (embedded valkey, local Ray, two real engine workers on the tiny checkpoint, two
active-active router processes: `--routers 2`) serves the whole module; the tests talk to the
first router unless they check the replicas; the last tests kill workers (mid-stream: the request
moves; then the supervisor replaces them) and the module teardown checks that SIGTERM leaves no
process behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import openai
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.stack import admin, running_stack, worker_pid, worker_pids

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_stack(
        tmp_path_factory.mktemp("up"), ["--http-port", "0", "--grpc-port", "0", "--routers", "2"]
    ) as endpoints:
        yield endpoints


@pytest.fixture(scope="module")
def client(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=stack["openai_base_url"], api_key="none", max_retries=0, timeout=60
    )


def test_completion_non_streaming(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    out = client.completions.create(
        model=stack["model"], prompt="The quick brown fox", max_tokens=8, temperature=0
    )
    assert out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens >= 1
    assert out.usage.prompt_tokens > 0
    again = client.completions.create(
        model=stack["model"], prompt="The quick brown fox", max_tokens=8, temperature=0
    )
    assert again.choices[0].text == out.choices[0].text  # greedy is deterministic


def test_completion_streaming(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    whole = client.completions.create(
        model=stack["model"],
        prompt="Once upon a time",
        max_tokens=10,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    parts = list(
        client.completions.create(
            model=stack["model"],
            prompt="Once upon a time",
            max_tokens=10,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == "length"


def test_chat_both_ways(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    messages: Any = [{"role": "user", "content": "Hello, how are you?"}]
    out = client.chat.completions.create(
        model=stack["model"], messages=messages, max_tokens=6, temperature=0, seed=1
    )
    assert out.choices[0].message.role == "assistant"
    assert out.usage is not None and out.usage.total_tokens > 0
    stream = client.chat.completions.create(
        model=stack["model"],
        messages=messages,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == out.choices[0].message.content
    assert chunks[-1].usage is not None


def test_sampling_with_seed_is_reproducible(client: openai.OpenAI, stack: dict[str, Any]) -> None:
    kwargs: Any = dict(
        model=stack["model"],
        prompt="A seeded story:",
        max_tokens=12,
        temperature=0.9,
        top_p=0.9,
        seed=42,
    )
    assert (
        client.completions.create(**kwargs).choices[0].text
        == client.completions.create(**kwargs).choices[0].text
    )


def test_bad_requests_get_4xx_and_the_stack_keeps_serving(
    client: openai.OpenAI, stack: dict[str, Any]
) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=stack["model"], prompt="x", max_tokens=100_000)
    assert "maximum context length" in str(info.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=stack["model"], messages=[])
    resp = httpx.post(
        stack["openai_base_url"] + "/completions",
        content=b"{oops",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400 and "error" in resp.json()
    assert client.completions.create(model=stack["model"], prompt="x", max_tokens=2).choices


def test_repeated_long_prompt_hits_the_prefix_cache(
    client: openai.OpenAI, stack: dict[str, Any]
) -> None:
    prompt = "In a village by the sea there lived an old fisherman. " * 12
    client.completions.create(model=stack["model"], prompt=prompt, max_tokens=2)
    time.sleep(0.5)  # let KV events reach the router's index
    second = client.completions.create(model=stack["model"], prompt=prompt, max_tokens=2)
    assert second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and (details.cached_tokens or 0) >= 64


def test_grpc_generate_health_and_reflection(stack: dict[str, Any]) -> None:
    with grpc.insecure_channel(stack["grpc"]) as channel:
        stub = pb_grpc.InferenceStub(channel)
        request = pb.GenerateRequest(
            model=stack["model"],
            prompt="The quick brown fox",
            sampling=pb.SamplingParams(max_tokens=5, temperature=0),
        )
        responses = list(stub.Generate(request, timeout=60))
        assert responses[-1].finish_reason in ("stop", "length")
        assert responses[-1].usage.completion_tokens >= 1
        assert sum(len(r.token_ids) for r in responses) == responses[-1].usage.completion_tokens
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(pb.GenerateRequest(model="nope", prompt="x"), timeout=10))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        models = stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert models.models[0].id == stack["model"]
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(
            iter(
                reflect.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        )
        names = {s.name for s in reply.list_services_response.service}
        assert "mainsail.proto.v1.Inference" in names
        assert "mainsail.proto.v1.Registry" not in names  # workers register on the fleet port


def test_metrics_and_health(stack: dict[str, Any]) -> None:
    assert httpx.get(stack["http"] + "/health").json()["workers"] == stack["workers"]
    text = httpx.get(stack["metrics"]).text
    assert "mainsail_router_ttft_seconds_count" in text
    assert 'mainsail_router_workers{role="unified"} 2.0' in text
    # Each worker serves its own /metrics (vLLM's names) where the router's list says.
    workers = httpx.get(stack["http"] + "/workers", headers=admin(stack), timeout=10).json()["data"]
    assert len(workers) == stack["workers"]
    for worker in workers:
        scraped = httpx.get(f"http://{worker['metrics_address']}/metrics", timeout=10).text
        assert f'vllm:num_requests_running{{model_name="{stack["model"]}"}}' in scraped


def _listed(router: dict[str, Any], auth: dict[str, str]) -> dict[str, dict[str, Any]]:
    data = httpx.get(router["http"] + "/workers", headers=auth, timeout=10).json()["data"]
    return {w["id"]: w for w in data}


def _until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not seen in {timeout} s"
        time.sleep(0.1)


def test_every_router_replica_serves_and_hears_a_drain(stack: dict[str, Any]) -> None:
    """`--routers 2`: both replicas list both workers and answer the same greedy tokens; a
    drain asked through one replica is seen by the other (the worker holds it)."""
    first, second = stack["routers"]
    auth = admin(stack)
    assert first["http"] == stack["http"] and first["pid"] != second["pid"]
    assert (
        set(_listed(first, auth)) == set(_listed(second, auth)) and len(_listed(second, auth)) == 2
    )
    texts = {
        openai.OpenAI(base_url=r["openai_base_url"], api_key="none", max_retries=0, timeout=60)
        .completions.create(
            model=stack["model"], prompt="Two harbours", max_tokens=8, temperature=0
        )
        .choices[0]
        .text
        for r in (first, second)
    }
    assert len(texts) == 1
    worker = sorted(_listed(first, auth))[0]
    assert (
        httpx.post(
            f"{second['http']}/workers/{worker}/drain", headers=admin(stack), timeout=10
        ).status_code
        == 200
    )
    try:
        _until(lambda: _listed(first, auth)[worker]["draining"], "the drain on the other replica")
    finally:
        httpx.delete(f"{first['http']}/workers/{worker}/drain", headers=admin(stack), timeout=10)
    _until(
        lambda: not _listed(second, auth)[worker]["draining"], "the undrain on the other replica"
    )


def test_draining_a_worker_live_migrates_its_stream(stack: dict[str, Any]) -> None:
    """`POST /workers/<id>/drain` moves a *seeded sampling* stream to the other worker
    mid-flight; the client gets exactly the tokens of an undisturbed run (sampling is seeded
    per position, so the other worker draws what the first would have). The drain is lifted
    after."""
    request = pb.GenerateRequest(
        model=stack["model"],
        prompt="A long voyage begins at dawn",
        sampling=pb.SamplingParams(
            max_tokens=600, temperature=0.8, top_p=0.95, seed=11, ignore_eos=True
        ),
    )
    with grpc.insecure_channel(stack["grpc"]) as channel:
        stub = pb_grpc.InferenceStub(channel)
        reference = [t for r in stub.Generate(request, timeout=120) for t in r.token_ids]
        tokens: list[int] = []
        served_by: list[str] = []
        drained = None
        last = pb.GenerateResponse()
        for last in stub.Generate(request, timeout=120):
            tokens += last.token_ids
            served_by.append(last.worker_id)
            if drained is None and len(tokens) >= 20:
                drained = last.worker_id
                reply = httpx.post(
                    f"{stack['http']}/workers/{drained}/drain", headers=admin(stack), timeout=10
                )
                assert reply.json() == {"worker": drained, "draining": True, "migrated": 1}
    try:
        assert drained is not None, "the stream finished before the drain"
        assert last.finish_reason == "length" and not last.error
        assert served_by[-1] != drained
        assert tokens == reference
        assert last.usage.completion_tokens == 600
        metrics = httpx.get(stack["metrics"], timeout=10).text
        assert "mainsail_router_migrations_total 1.0" in metrics
    finally:
        if drained is not None:
            httpx.delete(
                f"{stack['http']}/workers/{drained}/drain", headers=admin(stack), timeout=10
            )


def test_a_worker_dying_mid_stream_costs_the_request_nothing(stack: dict[str, Any]) -> None:
    """Live migration: SIGKILL the worker serving a greedy stream; the router continues the
    request on the other worker and the client gets exactly the tokens of an undisturbed run.
    (The supervisor then brings the killed worker back; see the last test.)"""
    request = pb.GenerateRequest(
        model=stack["model"],
        prompt="Once upon a time, in a harbour full of sails",
        sampling=pb.SamplingParams(max_tokens=600, temperature=0, ignore_eos=True),
    )
    with grpc.insecure_channel(stack["grpc"]) as channel:
        stub = pb_grpc.InferenceStub(channel)
        reference = [t for r in stub.Generate(request, timeout=120) for t in r.token_ids]
        assert len(reference) == 600
        pids = worker_pids(stack)  # looked up before the stream: the kill must be quick
        tokens: list[int] = []
        served_by: list[str] = []
        killed = None
        last = pb.GenerateResponse()
        for last in stub.Generate(request, timeout=120):
            tokens += last.token_ids
            served_by.append(last.worker_id)
            if killed is None and len(tokens) >= 20:
                killed = pids[last.worker_id]
                psutil.Process(killed).kill()
    assert killed is not None, "the stream finished before a worker could be killed"
    assert last.finish_reason == "length" and not last.error
    assert len(set(served_by)) == 2, "the request should have moved to the other worker"
    assert tokens == reference
    assert last.usage.completion_tokens == 600
    assert last.usage.prompt_tokens == reference_prompt_tokens(stack, request)
    metrics = httpx.get(stack["metrics"], timeout=10).text
    assert "mainsail_router_resumes_total 1.0" in metrics


def reference_prompt_tokens(stack: dict[str, Any], request: pb.GenerateRequest) -> int:
    """Prompt tokens of ``request`` as an undisturbed run reports them."""
    short = pb.GenerateRequest()
    short.CopyFrom(request)
    short.sampling.max_tokens = 1
    with grpc.insecure_channel(stack["grpc"]) as channel:
        responses = list(pb_grpc.InferenceStub(channel).Generate(short, timeout=60))
    return int(responses[-1].usage.prompt_tokens)


def _workers(stack: dict[str, Any]) -> dict[str, str]:
    """Registered worker id -> address, from the router's admin API."""
    reply = httpx.get(stack["http"] + "/workers", headers=admin(stack), timeout=10).json()["data"]
    return {w["id"]: w["address"] for w in reply}


def _wait_for(probe: Any, what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_killed_worker_is_replaced_and_registers_again(stack: dict[str, Any]) -> None:
    """Runs last. `mainsail up` supervises its workers: SIGKILL one worker actor (by pid, found
    with `worker_pid`: a descendant of the `mainsail up` this module started); the supervisor
    starts a replacement under the same worker id, which registers again and serves."""
    want = stack["workers"]
    before = _wait_for(lambda: len(w := _workers(stack)) == want and w, f"{want} workers")
    victim, address = sorted(before.items())[0]
    psutil.Process(worker_pid(stack, victim)).kill()
    after = _wait_for(
        lambda: (w := _workers(stack)).get(victim) not in (None, address) and len(w) == want and w,
        f"worker {victim} registered again at a new address",
    )
    assert set(after) == set(before)
    others = [w for w in after if w != victim]
    for other in others:  # only the replacement may take the next request
        httpx.post(
            f"{stack['http']}/workers/{other}/drain", headers=admin(stack), timeout=10
        ).raise_for_status()
    try:
        request = pb.GenerateRequest(
            model=stack["model"],
            prompt="Back from the dead",
            sampling=pb.SamplingParams(max_tokens=8, temperature=0, ignore_eos=True),
        )
        with grpc.insecure_channel(stack["grpc"]) as channel:
            replies = list(pb_grpc.InferenceStub(channel).Generate(request, timeout=60))
        assert {r.worker_id for r in replies if r.token_ids} == {victim}
        assert sum(len(r.token_ids) for r in replies) == 8
    finally:
        for other in others:
            httpx.delete(f"{stack['http']}/workers/{other}/drain", headers=admin(stack), timeout=10)
