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
           + seq_s        * (prefill chunks + decode seqs)  per sequence in the step
           + decode_batch_s, if the step has decodes         the batched decode attention's setup

The last two are the host's share: an engine without a variable-length attention kernel (the
CPU engine) runs one attention call per prefill chunk, and every sequence in a step costs
bookkeeping, sampling and detokenizing; a step with decodes builds padded block tables and a
mask once. On a GPU engine they are small (the shipped GPU profiles leave them at 0); on the
CPU engine a decode's own share is ten times its GEMM share.

How decode attention reads the cache is the engine's: paged-attention kernels read each
sequence's own context (``decode_attention: sum``), while an engine that pads the batch's block
tables to the longest sequence — Mainsail's CPU engine does — reads ``B * max context``
(``decode_attention: padded``). A step that starts after the worker sat idle costs
``idle_wake_s`` more. Times are seconds.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

REPLAYED_STEPS = 256
"""Steps `StepCost.time_to_first_token` replays one by one; a longer backlog's rest is summed
in closed form (a router predicts for every waiting request, often)."""


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
    seq_s: float = Field(
        0.0, ge=0, description="Per sequence in the step (each decode and each prefill chunk)."
    )
    decode_batch_s: float = Field(
        0.0, ge=0, description="Extra time of a step that has decodes (batched decode setup)."
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
        prefill_chunks: int | None = None,
    ) -> float:
        """Seconds for one step (see the module docstring for the formula);
        ``prefill_chunks`` defaults to one when there are prefill tokens."""
        chunks = (1 if prefill_tokens > 0 else 0) if prefill_chunks is None else prefill_chunks
        return (
            self.step_overhead_s
            + (self.idle_wake_s if after_idle else 0.0)
            + self.token_s * (prefill_tokens + decode_seqs)
            + self.attn_pair_s * attn_pairs
            + self.kv_read_s * decode_context
            + self.seq_s * (chunks + decode_seqs)
            + (self.decode_batch_s if decode_seqs > 0 else 0.0)
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
        ahead_prompts: int = 1,
        after_idle: bool = False,
    ) -> float:
        """Seconds until a new request's first token on a worker that must first prefill
        ``prefill_ahead`` tokens queued before it (``ahead_prompts`` prompts of equal length),
        then its own ``uncached_tokens`` (after ``cached_tokens`` served from its prefix
        cache), while ``decode_seqs`` running sequences holding ``decode_context`` context
        tokens (as ``decode_attention`` reads them) decode one token per step.

        The engine's steps are replayed as it schedules them: every decode first (one token
        each), then prefill chunks first come first served with what is left of
        ``max_batched_tokens``, several prompts sharing a step; each chunk is charged its
        tokens, its attention over what its prompt computed before, and its per-sequence
        share. A prompt ahead that got its first token decodes from the next step on (its
        output length is unknown; it is assumed to outlast this request's prefill). A worker
        at ``max_num_seqs`` must first finish a sequence, which depends on output lengths
        nobody knows: not charged (a lower bound there). ``after_idle``: the worker is idle
        now, so the first step pays ``idle_wake_s``. Beyond `REPLAYED_STEPS` steps the rest
        of the backlog is summed in closed form (`_rest`)."""
        decodes = max(0, min(decode_seqs, self.max_num_seqs))
        context = max(0, decode_context)
        ahead = max(0, prefill_ahead)
        count = min(max(1, ahead_prompts), ahead) if ahead else 0
        queue: deque[list[int]] = deque(  # [tokens left, tokens done] per prompt, in order
            [ahead // count + (1 if i < ahead % count else 0), 0] for i in range(count)
        )
        own = [max(1, uncached_tokens), max(0, cached_tokens)]  # the last token is computed
        queue.append(own)
        total = 0.0
        first = after_idle
        for _ in range(REPLAYED_STEPS):
            if own[0] <= 0:
                return total
            budget = max(1, self.max_batched_tokens - decodes)
            new, pairs, chunks = 0, 0.0, 0
            for item in queue:  # first come first served: only the front prompts get budget
                n = min(budget, item[0])
                pairs += attn_pairs(n, item[1])
                item[0] -= n
                item[1] += n
                new += n
                chunks += 1
                budget -= n
                if budget <= 0:
                    break
            total += self.step_time(new, pairs, decodes, context, first, prefill_chunks=chunks)
            first = False
            context += decodes
            while queue[0] is not own and queue[0][0] == 0:  # prefilled: it decodes from now
                done = queue.popleft()[1]
                if decodes < self.max_num_seqs:
                    context = self._join_decodes(decodes, context, done)
                    decodes += 1
        if own[0] <= 0:
            return total
        return total + self._rest(list(queue), decodes, context)

    def _rest(self, queue: list[list[int]], decodes: int, context: int) -> float:
        """The steps left of a long backlog, summed in closed form: as many as its tokens
        fill at the budget; its attention exactly (a prompt's chunks together attend like
        one); one chunk per prompt plus one split per step; the decodes as they are now,
        their context growing a token each per step."""
        tokens = sum(left for left, _ in queue)
        pairs = sum(left * (done + left / 2) for left, done in queue)
        steps = math.ceil(tokens / max(1, self.max_batched_tokens - decodes))
        per_step = self.decode_step_time(decodes, 0) if decodes else self.step_overhead_s
        return (
            steps * per_step
            + self.token_s * tokens
            + self.attn_pair_s * pairs
            + self.seq_s * (len(queue) + steps - 1)
            + self.kv_read_s * (steps * context + decodes * steps * (steps - 1) / 2)
        )

    def _join_decodes(self, decodes: int, context: int, length: int) -> int:
        """Decode context after a sequence of ``length`` tokens joins ``decodes`` others."""
        if self.decode_attention == "sum" or decodes == 0:
            return context + length
        width = max(length, -(-context // decodes))
        return (decodes + 1) * width


def attn_pairs(new_tokens: int, context_before: int) -> float:
    """Attention pairs of a prefill chunk: ``n * (c + n / 2)``."""
    return new_tokens * (context_before + new_tokens / 2)
