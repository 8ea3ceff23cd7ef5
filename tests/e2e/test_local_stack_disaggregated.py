"""End to end: `mainsail up -f deploy/examples/dense-prefill-decode.yaml --replicas 1`.

The example as a user runs it on a laptop: one prefill and one decode worker (Ray actors, real
engines on the example's generated checkpoint), the embedded Redis as the cache pool, the
router. A greedy request must come back with the tokens a single engine computes, its first
token from the prefill worker and the rest from the decode worker, which fetched the prompt's
KV from Redis; the `openai` SDK sees one ordinary stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
import torch
from support.reference import greedy_tokens
from support.stack import admin, running_stack

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.workers.checkpoint import ensure_checkpoint

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy/examples/dense-prefill-decode.yaml"
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    args = ["-f", str(EXAMPLE), "--replicas", "1", "--http-port", "0", "--grpc-port", "0"]
    with running_stack(tmp_path_factory.mktemp("up-pd"), args) as endpoints:
        yield endpoints


def test_prefill_then_decode_with_the_kv_handed_over(stack: dict[str, Any]) -> None:
    workers = httpx.get(stack["http"] + "/workers", headers=admin(stack), timeout=10).json()["data"]
    assert sorted(w["role"] for w in workers) == ["decode", "prefill"]
    prompt = torch.randint(3, 500, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    request = pb.GenerateRequest(
        model=stack["model"],
        prompt_token_ids=prompt,
        sampling=pb.SamplingParams(max_tokens=MAX_TOKENS, temperature=0, ignore_eos=True),
    )
    with grpc.insecure_channel(stack["grpc"]) as channel:
        responses = list(pb_grpc.InferenceStub(channel).Generate(request, timeout=120))
    assert [t for r in responses for t in r.token_ids] == greedy_tokens(
        ensure_checkpoint("llama", seed=7), prompt, MAX_TOKENS
    )
    assert "prefill" in responses[0].worker_id and "decode" in responses[-1].worker_id
    assert responses[-1].finish_reason == "length"
    assert responses[-1].usage.prompt_tokens == 200
    assert responses[-1].usage.completion_tokens == MAX_TOKENS
    # The decode worker never saw this prompt: its 12 full blocks came from Redis as cache hits.
    assert responses[-1].usage.cached_tokens >= 12 * 16
    metrics = httpx.get(stack["metrics"], timeout=10).text
    assert "mainsail_router_handoffs_total 1.0" in metrics


def test_openai_stream_is_one_ordinary_stream(stack: dict[str, Any]) -> None:
    client = openai.OpenAI(base_url=stack["openai_base_url"], api_key="none", max_retries=0)
    chunks = list(
        client.completions.create(
            model=stack["model"], prompt="Hello " * 40, max_tokens=8, stream=True,
            temperature=0, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes.count("length") == 1 and finishes[-1] == "length"
    assert "".join(c.choices[0].text for c in chunks if c.choices)
