"""The one cost model of an engine step, shared by the simulator and the router's admission.

Why in the contracts: the simulator (`mainsail.sim`) replays traces with it, and the router
predicts each worker's time to first token with it before admitting a request (issue 14).
Two copies would drift; the simulator's calibration (`python -m mainsail.sim.calibrate`, from
measured engine steps) fits exactly these parameters, so a deployment pastes the fitted
figures into `spec.router.admission.stepCost` and both agree.

A continuous-batching engine runs one forward pass per step over a mix of prefill chunks and
decode tokens. Its time is a fixed part plus terms linear in the work (the shape Vidur,
Splitwise-sim and DistServe use):

    step_s = step_overhead_s                              weights read once, launch, sampling
           + token_s      * (prefill tokens + decode seqs)  GEMMs, per token in the batch
           + attn_pair_s  * Σ_chunks n * (c + n / 2)        prefill attention: n new tokens over
                                                             c cached + the chunk's own causal half
           + kv_read_s    * Σ_decode context tokens          decode attention reads the KV cache

How decode attention reads the cache is the engine's: paged-attention kernels read each
sequence's own context (``decode_attention: sum``), while an engine that pads the batch's block
tables to the longest sequence — Mainsail's CPU engine does — reads ``B * max context``
(``decode_attention: padded``). A step that starts after the worker sat idle costs
``idle_wake_s`` more. Times are seconds.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class StepCost(BaseModel):
    """Parameters of one engine's step time (seconds) and its batch limits."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    step_overhead_s: float = Field(..., ge=0, description="Fixed time of one engine step.")
    token_s: float = Field(..., ge=0, description="Per token in the batch (GEMM cost).")
    attn_pair_s: float = Field(..., ge=0, description="Per (new token x context token) pair.")
    kv_read_s: float = Field(..., ge=0, description="Per context token read by a decode step.")
    idle_wake_s: float = Field(
        0.0, ge=0, description="Extra time of a step that starts after the worker was idle."
    )
    decode_attention: Literal["sum", "padded"] = Field(
        "sum",
        description="Context a decode step reads: each sequence's own (`sum`) or the batch "
        "padded to its longest sequence (`padded`).",
    )
    max_num_seqs: int = Field(256, ge=1, description="Most sequences in one step.")
    max_batched_tokens: int = Field(8192, ge=1, description="Token budget of one step.")

    def step_time(
        self,
        prefill_tokens: int,
        attn_pairs: float,
        decode_seqs: int,
        decode_context: int,
        after_idle: bool = False,
    ) -> float:
        """Seconds for one step (see the module docstring for the formula)."""
        return (
            self.step_overhead_s
            + (self.idle_wake_s if after_idle else 0.0)
            + self.token_s * (prefill_tokens + decode_seqs)
            + self.attn_pair_s * attn_pairs
            + self.kv_read_s * decode_context
        )

    def decode_context(self, contexts: list[int]) -> int:
        """Context tokens a decode step over sequences of ``contexts`` reads."""
        if not contexts:
            return 0
        return len(contexts) * max(contexts) if self.decode_attention == "padded" else sum(contexts)

    def decode_step_time(self, batch: int, context_tokens: int) -> float:
        """Seconds for a decode-only step of ``batch`` sequences holding ``context_tokens``."""
        return self.step_time(0, 0.0, batch, context_tokens)

    def prefill_time(self, uncached_tokens: int, cached_tokens: int = 0) -> float:
        """Seconds to prefill one prompt alone, in chunks of ``max_batched_tokens``."""
        total = 0.0
        done = 0
        while done < uncached_tokens:
            n = min(self.max_batched_tokens, uncached_tokens - done)
            c = cached_tokens + done
            total += self.step_time(n, attn_pairs(n, c), 0, 0)
            done += n
        return total

    def time_to_first_token(
        self,
        prefill_ahead: int,
        uncached_tokens: int,
        cached_tokens: int,
        decode_seqs: int,
        decode_context: int,
    ) -> float:
        """Seconds until a new request's first token on a worker that must first prefill
        ``prefill_ahead`` tokens queued before it, then its own ``uncached_tokens`` (after
        ``cached_tokens`` served from its prefix cache), while ``decode_seqs`` running
        sequences holding ``decode_context`` context tokens decode one token per step.

        Steps run at the budget: decodes first (one token each), prefill fills the rest of
        ``max_batched_tokens`` (as the engine schedules them). The prefill queued ahead is
        charged tokens and steps but not its attention (its contexts are unknown); the
        request's own chunks are charged their attention over its cached prefix."""
        decode_seqs = max(0, min(decode_seqs, self.max_num_seqs))
        per_step = max(1, self.max_batched_tokens - decode_seqs)
        total_prefill = max(0, prefill_ahead) + max(0, uncached_tokens)
        steps = max(1, math.ceil(total_prefill / per_step))
        return (
            steps * self.step_time(0, 0.0, decode_seqs, decode_context)
            + self.token_s * total_prefill
            + self.attn_pair_s * attn_pairs(max(0, uncached_tokens), max(0, cached_tokens))
        )


def attn_pairs(new_tokens: int, context_before: int) -> float:
    """Attention pairs of a prefill chunk: ``n * (c + n / 2)``."""
    return new_tokens * (context_before + new_tokens / 2)
