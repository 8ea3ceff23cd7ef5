"""The engine's types on the `Worker` wire: requests in, token chunks and cost figures out.

Why a module of its own: the same conversions serve `Submit`, `SubmitMany`, the fake OpenAI
backend and KV migration (a moved request's sampling parameters travel in `MigratedRequest`),
so each mapping between a proto message and an engine type is written once, here, with its
inverse beside it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.spec.request_contract import DEFAULT_MAX_TOKENS, check_worker_request
from mainsail.workers.engine import EngineMetrics, EngineRequest, RequestOutput, SamplingParams


@dataclass(frozen=True)
class RequestLimits:
    """What the worker checks every request against before the engine sees it."""

    vocab_size: int
    max_model_len: int

    def check(self, request: pb.WorkerRequest) -> None:
        """Raise `FieldError` for a request outside the shared contract."""
        check_worker_request(request, vocab_size=self.vocab_size, max_model_len=self.max_model_len)


def sampling_from_proto(s: pb.SamplingParams) -> SamplingParams:
    """Engine sampling parameters from the wire (absent fields take engine defaults)."""
    return SamplingParams(
        temperature=s.temperature if s.HasField("temperature") else 1.0,
        top_p=s.top_p if s.HasField("top_p") else 1.0,
        top_k=max(0, s.top_k),
        seed=s.seed if s.HasField("seed") else None,
        max_tokens=s.max_tokens or DEFAULT_MAX_TOKENS,
        stop=tuple(s.stop),
        stop_token_ids=tuple(s.stop_token_ids),
        logprobs=s.logprobs or None,
        ignore_eos=s.ignore_eos,
    )


def sampling_to_proto(s: SamplingParams) -> pb.SamplingParams:
    """The wire form of engine sampling parameters (inverse of `sampling_from_proto`)."""
    out = pb.SamplingParams(
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        max_tokens=s.max_tokens,
        stop=list(s.stop),
        stop_token_ids=list(s.stop_token_ids),
        logprobs=s.logprobs or 0,
        ignore_eos=s.ignore_eos,
    )
    if s.seed is not None:
        out.seed = s.seed
    return out


def engine_request_from_proto(request: pb.WorkerRequest, now: float | None = None) -> EngineRequest:
    """The engine's request for a wire `WorkerRequest` (both Submit and SubmitMany). Its
    unix-time deadline becomes seconds from now (``now``: unix time, default the wall clock),
    so the engine compares deadlines on its own clock."""
    wall = time.time() if now is None else now
    return EngineRequest(
        request_id=request.request_id,
        prompt_token_ids=list(request.prompt_token_ids),
        sampling=sampling_from_proto(request.sampling),
        priority=request.priority,
        adapter=request.adapter or None,
        sampled_before=request.sampled_before,
        cache_namespace=request.cache_namespace or None,
        ttft_budget_s=request.ttft_deadline - wall if request.ttft_deadline else None,
        tpot_s=request.tpot_target or None,
    )


def chunk_from_outputs(outs: Sequence[RequestOutput]) -> pb.TokenChunk:
    """Outputs that were ready together as one wire chunk: token ids, text and logprobs
    concatenated in order; finish reason, error and usage from the last output."""
    last = outs[-1]
    chunk = pb.TokenChunk(
        request_id=last.request_id,
        finish_reason=last.finish_reason or "" if last.finished else "",
        error=last.error or "",
    )
    if len(outs) == 1:
        chunk.token_ids.extend(last.new_token_ids)
        chunk.text = last.new_text
    else:
        for out in outs:
            chunk.token_ids.extend(out.new_token_ids)
        chunk.text = "".join(out.new_text for out in outs)
    for out in outs:
        if out.logprobs:
            _add_logprobs(chunk, out)
    if last.finished:
        chunk.usage.prompt_tokens = last.prompt_tokens
        chunk.usage.completion_tokens = last.completion_tokens
        chunk.usage.cached_tokens = last.cached_tokens
    return chunk


def _add_logprobs(chunk: pb.TokenChunk, out: RequestOutput) -> None:
    for token_id, top in zip(out.new_token_ids, out.logprobs or (), strict=False):
        ranked = sorted(top.items(), key=lambda kv: kv[1], reverse=True)
        chunk.logprobs.add(
            token_id=token_id,
            logprob=top.get(token_id, ranked[0][1] if ranked else 0.0),
            top_token_ids=[t for t, _ in ranked],
            top_logprobs=[lp for _, lp in ranked],
        )


def kv_cost_to_proto(m: EngineMetrics) -> pb.KVCost:
    """The engine's cost model as the router reads it (`LoadSnapshot.kv_cost`)."""
    cost = m.kv_cost
    if cost is None:
        return pb.KVCost()
    return pb.KVCost(
        prefill_s_per_token=cost.prefill_s_per_token,
        tier_id=m.kv_tier_id,
        fetch_policy=m.kv_fetch_policy,
        tier_rtt_s=cost.rtt_s,
        tier_bandwidth_bps=cost.bandwidth_bps,
        block_bytes=cost.block_bytes,
    )
