"""The one KV cost model: what it costs to make a prompt's KV ready, by where its blocks are.

Shared because three parties must agree on it: the engine decides per request whether to fetch
blocks from the shared Redis tier or recompute them (`decide_fetch`); the router prices each
worker's cached prefix with the same figures, reported by that worker, to send a request where
its time to first token is least (`prefix_seconds`, the `prefill-time` scorer); the simulator
times its Redis tier with it.

    fetch_time(n)     = rtt + n * block_bytes / bandwidth
    recompute_time(n) = n * block_size * prefill_seconds_per_token

Fetch when fetch_time < recompute_time. The round trip, the bandwidth and the prefill rate
are measured at run time by the engine (exponential moving averages of observed probes,
transfers and prefill steps), starting from conservative defaults, so the decision follows the
machine: on a tiny CPU model recomputing is often cheaper than a round trip; on a large GPU
model fetching usually wins. `FetchPolicy` can force the decision (tests, benchmarks).

Linear in tokens on purpose: it is what the engine measures (seconds per prefilled token,
averaged over its real chunks), and a ranking of workers for one request only needs the
differences between them to be priced consistently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

FetchPolicy = Literal["auto", "always", "never"]
FETCH_POLICIES: tuple[FetchPolicy, ...] = ("auto", "always", "never")


def decide_fetch(policy: FetchPolicy, model: FetchCostModel, blocks: int) -> bool:
    """Whether to fetch ``blocks`` leading blocks that Redis holds, under ``policy``."""
    if blocks <= 0 or policy == "never":
        return False
    return policy == "always" or model.should_fetch(blocks)


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

    def observe_rtt(self, seconds: float) -> FetchCostModel:
        """Fold a measured round trip (a pipelined existence probe) into the estimate."""
        if seconds <= 0:
            return self
        return replace(self, rtt_s=(1 - self.alpha) * self.rtt_s + self.alpha * seconds)

    def observe_prefill(self, tokens: int, seconds: float) -> FetchCostModel:
        """Fold a measured prefill of ``tokens`` taking ``seconds`` into the per-token cost."""
        if tokens <= 0 or seconds <= 0:
            return self
        per = seconds / tokens
        value = (1 - self.alpha) * self.prefill_s_per_token + self.alpha * per
        return replace(self, prefill_s_per_token=value)


def prefix_seconds(
    model: FetchCostModel,
    prompt_tokens: int,
    local_blocks: int,
    tier_blocks: int = 0,
    policy: FetchPolicy | None = "auto",
) -> float:
    """Expected seconds until a prompt's KV is ready on a worker, given where its blocks are.

    ``local_blocks``: leading blocks in the worker's own cache (free). ``tier_blocks``: leading
    blocks the worker can read from its shared tier (those beyond ``local_blocks`` cost what
    the engine would pay for them: a fetch when `decide_fetch` says so, else a recompute).
    ``policy`` None: the worker has no tier (``tier_blocks`` ignored). Everything else is
    recomputed. The engine always computes the prompt's last token, so at most
    ``(prompt_tokens - 1) // block_size`` blocks can be reused.
    """
    if prompt_tokens <= 0:
        return 0.0
    bs = model.block_size
    reusable = (prompt_tokens - 1) // bs
    local = min(max(local_blocks, 0), reusable)
    seconds = 0.0
    done = local
    if policy is not None and tier_blocks > local:
        extra = min(tier_blocks, reusable) - local
        if extra > 0 and decide_fetch(policy, model, extra):
            seconds += model.fetch_seconds(extra)
            done += extra
    return seconds + (prompt_tokens - done * bs) * model.prefill_s_per_token
