"""One request's life in the simulator: its work and the timestamps the report is built from.

Why mutable with slots: a run holds up to ~10^5 of these and updates them at every engine step,
so they are plain records with ``__slots__``; every time is in virtual seconds.
"""

from __future__ import annotations

import math


class SimRequest:
    """A trace request being served (or served) by one simulated worker."""

    __slots__ = (
        "arrival",
        "block_hashes",
        "cached_tokens",
        "committed",
        "context",
        "decode_left",
        "dispatched",
        "finished",
        "first_token",
        "index",
        "input_tokens",
        "output_tokens",
        "prefill_done",
        "private_blocks",
        "started",
        "tier_tokens",
        "worker",
    )

    def __init__(
        self,
        index: int,
        arrival: float,
        input_tokens: int,
        output_tokens: int,
        block_hashes: list[int],
    ) -> None:
        if input_tokens < 1 or output_tokens < 1:
            raise ValueError(f"request {index}: input and output tokens must be >= 1")
        self.index = index
        self.arrival = arrival
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.block_hashes = block_hashes
        self.worker = -1
        self.dispatched = math.nan  # when the router sent it to a worker
        self.started = math.nan  # when the worker admitted it into its batch
        self.first_token = math.nan
        self.finished = math.nan
        self.cached_tokens = 0  # prompt tokens served from the prefix cache
        self.tier_tokens = 0  # of those, fetched from the shared tier for this request
        self.prefill_done = 0  # prompt tokens whose KV exists (cached or computed)
        self.committed = 0  # leading prompt blocks published as reusable
        self.private_blocks = 0  # reserved blocks without a reusable hash
        self.context = 0  # tokens in the KV cache
        self.decode_left = output_tokens  # tokens still to generate

    def total_blocks(self, block_size: int) -> int:
        """Blocks the request needs for prompt and output."""
        return -(-(self.input_tokens + self.output_tokens) // block_size)

    @property
    def ttft(self) -> float:
        """Time to first token, seconds."""
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first, seconds (0 for one-token outputs)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finished - self.first_token) / (self.output_tokens - 1)

    @property
    def e2e(self) -> float:
        """End-to-end latency, seconds."""
        return self.finished - self.arrival

    @property
    def queued(self) -> float:
        """Seconds between arrival and admission into a worker's batch."""
        return self.started - self.arrival
