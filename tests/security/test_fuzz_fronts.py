"""Hypothesis fuzzing of both fronts' request parsing against a real router and workers.

Whatever the body or message — wrong types, out-of-range numbers, huge integers, NaN,
unknown fields, odd unicode — the answer is a 2xx or a 4xx naming the problem: never a 5xx,
never a hang (every call has a timeout), never a worker evicted, and the router holds no
request once the answers are in (nothing grows).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fleet import MODEL, Background

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc

pytestmark = pytest.mark.security
EXAMPLES = 120

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 0.5, 1e308]),
)
_scalars = st.one_of(st.none(), st.booleans(), _numbers, st.text(max_size=40))
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = [
    "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "top_k", "n", "stream", "stream_options", "stop", "seed", "logprobs",
    "top_logprobs", "presence_penalty", "frequency_penalty", "ignore_eos", "priority",
    "slo_class", "adapter", "echo", "best_of", "suffix", "user",
]  # fmt: skip
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus"])},
    optional={"content": st.one_of(st.text(max_size=60), _values)},
)
_bodies = st.fixed_dictionaries(
    {"model": st.one_of(st.just(MODEL), _scalars)},
    optional={
        **{name: _values for name in _FIELDS if name not in ("model", "messages", "prompt")},
        "prompt": st.one_of(
            st.text(max_size=80), st.lists(st.integers(-(2**40), 2**40), max_size=8), _values
        ),
        "messages": st.one_of(st.lists(_message, max_size=4), _values),
        "stream": st.booleans(),
        "max_tokens": st.one_of(st.integers(-5, 8), _values),
    },
)


def _healthy(fleet: Background) -> None:
    router = fleet.fleet.router
    assert fleet.fleet.worker_ids() == {"w0", "w1"}, "a worker was evicted"
    assert router.router.metrics.failovers._value.get() == 0


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=_bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_http_bodies_never_get_a_5xx(
    background_fleet: Background, body: dict[str, Any], path: str
) -> None:
    f = background_fleet.fleet
    raw = json.dumps(body, allow_nan=True).encode()
    with httpx.Client(base_url=f.http, headers=f.key(), timeout=30) as http:
        resp = http.post(path, content=raw)
        assert resp.status_code < 500, (resp.status_code, resp.text, body)
        if resp.status_code >= 400:
            assert resp.json()["error"]["message"]
    _healthy(background_fleet)


_sampling = st.builds(
    pb.SamplingParams,
    temperature=st.floats(width=32, allow_nan=True, allow_infinity=True),
    top_p=st.floats(width=32, allow_nan=True, allow_infinity=True),
    top_k=st.integers(-(2**31), 2**31 - 1),
    seed=st.integers(-(2**63), 2**63 - 1),
    max_tokens=st.one_of(st.integers(-10, 10), st.integers(-(2**31), 2**31 - 1)),
    stop=st.lists(st.text(max_size=300), max_size=20),
    stop_token_ids=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=5),
    logprobs=st.integers(-(2**31), 2**31 - 1),
    ignore_eos=st.booleans(),
)
_requests = st.builds(
    pb.GenerateRequest,
    model=st.one_of(st.just(MODEL), st.text(max_size=20)),
    prompt=st.text(max_size=80),
    prompt_token_ids=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=6),
    messages=st.lists(
        st.builds(pb.ChatMessage, role=st.text(max_size=10), content=st.text(max_size=40)),
        max_size=3,
    ),
    sampling=_sampling,
    adapter=st.text(max_size=10),
    slo_class=st.text(max_size=10),
    priority=st.integers(-(2**31), 2**31 - 1),
    request_id=st.text(max_size=200),
)
_CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(request=_requests)
def test_grpc_requests_never_get_a_server_error(
    background_fleet: Background, request: pb.GenerateRequest
) -> None:
    f = background_fleet.fleet
    request.sampling.max_tokens = min(request.sampling.max_tokens, 8)  # keep runs short
    with grpc.insecure_channel(f.grpc) as channel:
        stub = pb_grpc.InferenceStub(channel)
        try:
            responses = list(stub.Generate(request, metadata=f.metadata(), timeout=30))
        except grpc.RpcError as exc:
            assert exc.code() in _CLIENT_ERRORS, (exc.code(), exc.details(), request)
            assert exc.details()
        else:
            assert responses and responses[-1].finish_reason in ("stop", "length"), responses
    _healthy(background_fleet)


_METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"BREW", b""])
_PATHS = st.sampled_from(
    [b"/v1/completions", b"/v1/chat/completions", b"/health", b"/workers/w0/drain",
     b"/requests/x/migrate", b"/metrics", b"*", b"/\x00", b"/%ff%fe"]
)  # fmt: skip
_header = st.tuples(
    st.binary(min_size=0, max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    method=_METHODS,
    path=_PATHS,
    version=st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b""]),
    headers=st.lists(_header, max_size=6),
    body=st.binary(max_size=200),
    garbage=st.binary(max_size=64),
)
def test_raw_http_heads_get_an_answer_or_a_close_never_a_5xx(
    background_fleet: Background,
    method: bytes,
    path: bytes,
    version: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    garbage: bytes,
) -> None:
    import socket

    f = background_fleet.fleet
    head = method + b" " + path + b" " + version + b"\r\n"
    head += b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", f.router.http_port), timeout=15) as sock:
        sock.sendall(garbage + head + body)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):  # the router answers or closes within the timeout
            answer += chunk
    if answer:
        assert answer.startswith(b"HTTP/1."), answer[:80]
        status = int(answer.split(b" ", 2)[1])
        assert status < 500 or (status == 503 and b"connections" in answer), answer[:300]
    _healthy(background_fleet)


def test_the_router_holds_nothing_after_the_fuzzing(background_fleet: Background) -> None:
    """Runs after the fuzzers (same module fleet): no open route, nothing queued or
    preparing, no worker booked, every worker still registered."""
    f = background_fleet.fleet
    router = f.router.router
    assert not router.moves.active
    assert router.chooser.waiting == 0
    assert router.preparing.busy == 0
    assert all(e.outstanding == 0 for e in f.router.registry.entries())
    _healthy(background_fleet)
