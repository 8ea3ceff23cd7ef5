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
        """Seconds to prefill one prompt alone, in chunks of ``max_batched_tokens``: one step
        and one chunk per ``max_batched_tokens`` tokens; the chunks together attend like one
        (``attn_pairs`` sums exactly over any chunking)."""
        if uncached_tokens <= 0:
            return 0.0
        steps = -(-uncached_tokens // self.max_batched_tokens)
        return (
            steps * (self.step_overhead_s + self.seq_s)
            + self.token_s * uncached_tokens
            + self.attn_pair_s * attn_pairs(uncached_tokens, cached_tokens)
        )

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
        ``prefill_ahead`` tokens queued before it in ``ahead_prompts`` prompts, then its own
        ``uncached_tokens`` (after ``cached_tokens`` served from its prefix cache), while
        ``decode_seqs`` running sequences holding ``decode_context`` context tokens decode
        one token per step. In closed form, O(1) (the router prices every candidate worker
        for every request); the formula and why it has this shape: `_closed_form`.

        ``after_idle``: the worker is idle now, so the first step pays ``idle_wake_s``.
        Otherwise it is busy, hence awake, but never predicted sooner than if it were idle
        (its floor is this prompt alone plus the wake: work that arrived just before this
        request woke it): queued work never makes a first token sooner, even across the idle
        boundary."""
        # conditional expressions, not min()/max(): the router runs this per candidate
        uncached = uncached_tokens if uncached_tokens > 1 else 1  # the last token is computed
        cached = cached_tokens if cached_tokens > 0 else 0
        total = self._closed_form(
            prefill_ahead if prefill_ahead > 0 else 0,
            uncached,
            cached,
            decode_seqs if decode_seqs > 0 else 0,
            decode_context if decode_context > 0 else 0,
            ahead_prompts if ahead_prompts > 1 else 1,
        )
        wake = self.idle_wake_s
        if after_idle:
            return total + wake
        if wake > 0:
            alone = self.prefill_time(uncached, cached) + wake
            return alone if alone > total else total
        return total

    def _closed_form(
        self, ahead: int, uncached: int, cached: int, running: int, context: int, prompts: int
    ) -> float:
        """The engine's steps until this prompt's first token, summed in closed form.

        How the engine (`mainsail.workers.engine.scheduler`) forms each step: every running
        decode takes one token of ``max_batched_tokens``; prefill chunks take the rest, first
        come first served, several prompts sharing a step; a waiting prompt is admitted only
        while fewer than ``max_num_seqs`` sequences run; a prompt that got its first token
        decodes from the next step on. With ``D`` decodes (at most ``max_num_seqs``), ``k``
        prompts ahead of ``P`` tokens and this prompt's ``u`` tokens:

            phase A, prefilling the prompts ahead: they join the decodes one by one, on
                average (k - 1) / 2 of them:   d_A = min(S, D + (k - 1) / 2),  n_A = P / (B - d_A)
            phase B, this prompt:              d_B = min(S, D + k),            n_B = u / (B - d_B)
            steps N = ceil(n_A + n_B); the part step that rounding adds is charged at phase A's
            decodes (so queueing more never moves steps into the dearer phase)

            time = (N - n_B) * G(d_A, ctx_A) + n_B * G(d_B, ctx_B)          each step's fixed part
                 + kv_read_s * d_A * N (N - 1) / 2                          decodes' context grows
                 + token_s * (P + u) + seq_s * (k + N)                      tokens; a chunk per
                                                                             prompt + a split a step
                 + attn_pair_s * (P * l / 2 + u * (c + u / 2))             prefill attention
                 + max(0, running + k + 1 - S) * G(S, ctx)                  waiting for free slots

        where ``G(d, ctx) = step_overhead_s + decode_batch_s * min(1, d) + (token_s + seq_s) * d
        + kv_read_s * ctx``, ``B = max_batched_tokens``, ``S = max_num_seqs``.

        Three choices keep it monotone — more work of any kind (decodes, their context, prompts
        ahead, their tokens, this prompt's uncached tokens) never predicts a sooner token —
        where the old step replay was not (docs/benchmarks.md):

        - The prompts ahead are taken as long as this one (``l = min(P, u + c)``) for their
          attention and for the width they pad decodes to. The worker reports how many tokens
          are queued and in how many prompts, not how they split; splitting them equally (the
          least attention for that count) predicted more, shorter prompts sooner, and a queue
          that gained a short prompt sooner.
        - The decodes' context counts only when something decodes (``kv_blocks_used`` also
          holds prompts mid-prefill); prompts ahead add theirs as they join (``P (k - 1) / 2k``
          on average in phase A, ``P`` in phase B); with ``padded`` attention the batch reads
          at least ``d * l`` once a prompt has joined (after the first of the ``k`` prompts
          ahead: ``(k - 1) / k`` of phase A).
        - Past ``max_num_seqs`` the engine admits no prompt until a sequence finishes: each
          missing slot is charged one step of the full batch (a lower bound: output lengths
          are unknown), and the prompts ahead still join (each replaces the one that finished).
        """
        budget, slots = self.max_batched_tokens, self.max_num_seqs
        decodes = running if running < slots else slots
        ctx = context if decodes else 0
        own = uncached + cached
        if ahead:
            prompts = prompts if prompts < ahead else ahead
            length = ahead if ahead < own else own
        else:
            prompts = length = 0
        joined_a = (prompts - 1) / 2 if prompts > 1 else 0.0
        d_a = decodes + joined_a
        d_a = d_a if d_a < slots else slots
        d_b = decodes + prompts
        d_b = d_b if d_b < slots else slots
        room_a, room_b = budget - d_a, budget - d_b
        n_a = ahead / (room_a if room_a > 1 else 1.0)
        n_b = uncached / (room_b if room_b > 1 else 1.0)
        steps = math.ceil(n_a + n_b - 1e-9)
        ctx_a = ctx + ahead * joined_a / prompts if prompts else ctx
        ctx_b = ctx + ahead
        if self.decode_attention == "padded":
            padded_a = d_a * length * 2 * joined_a / prompts if joined_a else 0.0
            if padded_a > ctx_a:  # a prompt has joined for (k - 1) / k of phase A
                ctx_a = padded_a
            if prompts and d_b * length > ctx_b:
                ctx_b = d_b * length
        fixed, kv_read, seq_s = self.step_overhead_s, self.kv_read_s, self.seq_s
        per_decode, batch_s = self.token_s + seq_s, self.decode_batch_s
        g_a = fixed + per_decode * d_a + kv_read * ctx_a + (batch_s * d_a if d_a < 1 else batch_s)
        g_b = fixed + per_decode * d_b + kv_read * ctx_b + (batch_s * d_b if d_b < 1 else batch_s)
        total = (
            (steps - n_b) * g_a
            + n_b * g_b
            + kv_read * d_a * steps * (steps - 1) / 2
            + self.token_s * (ahead + uncached)
            + seq_s * (prompts + steps)
            + self.attn_pair_s * (ahead * length / 2 + uncached * (cached + uncached / 2))
        )
        missing = running + prompts + 1 - slots
        if missing > 0:
            total += missing * (fixed + batch_s + per_decode * slots + kv_read * ctx)
        return total


def attn_pairs(new_tokens: int, context_before: int) -> float:
    """Attention pairs of a prefill chunk: ``n * (c + n / 2)``."""
    return new_tokens * (context_before + new_tokens / 2)
