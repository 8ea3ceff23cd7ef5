"""What goes into the engine (`EngineRequest`) and what comes out per step (`RequestOutput`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mainsail.spec.kvhash import hash_key
from mainsail.workers.engine.sampling_params import SamplingParams

FinishReason = Literal["stop", "length", "abort", "error", "migrated"]
"""``migrated``: the request continues on another worker, which received its KV."""


@dataclass(frozen=True)
class EngineRequest:
    """One generation request, already tokenized.

    ``priority``: higher runs first and is preempted last (the Kubernetes convention).
    ``adapter``: LoRA adapter name (one of the engine's ``config.adapters``; ``None`` = base
    model), also mixed into the KV hash seed so adapters never share cached blocks.
    ``arrival_time``: clock reading when the request arrived (for TTFT); defaults to now.
    ``sampled_before``: tokens of this request generated earlier elsewhere (a request moved
    between workers continues with them at the end of its prompt); seeded sampling continues
    at that position, so a moved seeded request draws what it would have drawn unmoved.
    ``cache_namespace``: the tenant's prefix-cache namespace (mixed into the KV hash seed with
    the adapter, `kv_key`): cached blocks are reused only within one namespace.
    ``ttft_budget_s``: seconds from arrival by which the first token is due (may be negative:
    already late); within one priority waiting requests are admitted earliest deadline first.
    ``tpot_s``: seconds each later token is due after the previous one; a decode whose token
    is due is scheduled before prefill chunks.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0
    adapter: str | None = None
    arrival_time: float | None = None
    sampled_before: int = 0
    cache_namespace: str | None = None
    ttft_budget_s: float | None = None
    tpot_s: float | None = None

    @property
    def kv_key(self) -> str | None:
        """What this request mixes into the KV hash seed: adapter and cache namespace."""
        return hash_key(self.adapter, self.cache_namespace)


@dataclass
class RequestOutput:
    """The delta of one request after one step (or its final record).

    ``new_text`` is the incrementally detokenized text of ``new_token_ids``; text that might
    begin a stop string is held back until it is known not to, and a matched stop string is
    never emitted. ``logprobs`` has one dict per new token: the top-n token ids of the raw
    distribution plus the chosen token, mapped to log-probabilities. ``cached_tokens`` counts
    prompt tokens served from the prefix cache. ``first_token_phases``, on the output with the
    first token only: seconds from arrival to the request's first step (queued, including a KV
    fetch from the shared tier) and from then to its first token (prefill), on the engine's
    clock (request traces read them; no per-token cost).
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    logprobs: list[dict[int, float]] | None = None
    error: str | None = None
    first_token_phases: tuple[float, float] | None = None
