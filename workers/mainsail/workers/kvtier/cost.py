"""When fetching KV blocks from Redis beats recomputing them.

fetch_time(n)     = rtt + n * block_bytes / bandwidth
recompute_time(n) = n * block_size * prefill_seconds_per_token

Fetch when fetch_time < recompute_time. Both rates are measured at run time (exponential
moving averages of observed transfers and prefill steps), starting from conservative
defaults, so the decision follows the machine: on a tiny CPU model recomputing is often
cheaper than a round trip; on a large GPU model fetching almost always wins.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class FetchCostModel:
    """Estimates in seconds; `observe_*` return an updated model (no hidden state)."""

    block_bytes: int
    block_size: int
    rtt_s: float = 0.0005
    bandwidth_bps: float = 500e6
    prefill_s_per_token: float = 0.0002
    alpha: float = 0.2

    def fetch_seconds(self, blocks: int) -> float:
        return self.rtt_s + blocks * self.block_bytes / self.bandwidth_bps

    def recompute_seconds(self, blocks: int) -> float:
        return blocks * self.block_size * self.prefill_s_per_token

    def should_fetch(self, blocks: int) -> bool:
        """True when fetching ``blocks`` is expected to be faster than recomputing them."""
        return blocks > 0 and self.fetch_seconds(blocks) < self.recompute_seconds(blocks)

    def observe_fetch(self, blocks: int, seconds: float) -> FetchCostModel:
        """Fold a measured fetch of ``blocks`` taking ``seconds`` into the bandwidth estimate."""
        if blocks <= 0 or seconds <= 0:
            return self
        transfer = max(seconds - self.rtt_s, 1e-6)
        bps = blocks * self.block_bytes / transfer
        return replace(self, bandwidth_bps=(1 - self.alpha) * self.bandwidth_bps + self.alpha * bps)

    def observe_prefill(self, tokens: int, seconds: float) -> FetchCostModel:
        """Fold a measured prefill of ``tokens`` taking ``seconds`` into the per-token cost."""
        if tokens <= 0 or seconds <= 0:
            return self
        per = seconds / tokens
        value = (1 - self.alpha) * self.prefill_s_per_token + self.alpha * per
        return replace(self, prefill_s_per_token=value)
