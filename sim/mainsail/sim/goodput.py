"""Goodput comparisons, shared by the simulator's and the live benchmark: one set of policy
names, one way to label tenants and classes, one goodput search, one fairness index.

Why one module: issue 14 asks for the same figure (the highest request rate at which >= 90 %
of requests meet their TTFT and TPOT SLOs, per routing policy) from the simulator
(`bench/sim_goodput.py`) and from the real stack (`bench/live_goodput.py`); if each script
named its policies or labelled its tenants in its own way the two tables could not be read
side by side. Everything here is pure (no I/O, no clock) and unit-tested
(`tests/unit/test_goodput_parts.py`).

Policies, by the label both benchmarks print:

- ``ours (default)``: the deployment's default `RoutingProfile`.
- ``least-work``: the worker with the least prefill work ahead of this request, counting its
  uncached part there (the strongest simple baseline). Simulator: `LeastWorkPolicy`. Live: the
  `prefill-time` scorer alone (seconds of prefill queued at the worker plus this prompt's
  uncached part, with the worker's own cost model), picked by max score: the argmax of its
  relative headroom is the argmin of that time.
- ``least-loaded``: fewest requests in flight at the worker. Simulator: `LeastLoadedPolicy`
  (waiting + running); live: the `running-requests` scorer alone (the router's own in-flight
  count, updated at dispatch).
- ``round-robin``: workers in turn (live: the `round-robin` picker).
- ``kv-only``: the `kv-prefix` scorer alone (cache affinity with no load signal).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mainsail.sim.traces import TRACE_BLOCK_TOKENS, TraceRequest
from mainsail.spec.routing_profile import RoutingProfile, ScorerWeight

TARGET = 0.90
"""Goodput counts a rate when at least this fraction of its requests met both SLOs."""

OURS = "ours (default)"
POLICY_LABELS = (OURS, "least-work", "least-loaded", "round-robin", "kv-only")

SIM_POLICIES: dict[str, tuple[str, RoutingProfile | None]] = {
    OURS: ("ours", RoutingProfile()),
    "least-work": ("least-work", None),
    "least-loaded": ("least-loaded", None),
    "round-robin": ("round-robin", None),
    "kv-only": ("ours", RoutingProfile(scorers=[ScorerWeight(name="kv-prefix", weight=1.0)])),
}
"""Label -> (simulator policy name, routing profile for the router's own code or None)."""


def live_profiles() -> dict[str, RoutingProfile]:
    """Label -> the routing profile a real router runs for that policy."""
    one = ["healthy", "role", "capacity"]
    return {
        OURS: RoutingProfile(),
        "least-work": RoutingProfile(
            filters=one, scorers=[ScorerWeight(name="prefill-time", weight=1.0)]
        ),
        "least-loaded": RoutingProfile(
            filters=one, scorers=[ScorerWeight(name="running-requests", weight=1.0)]
        ),
        "round-robin": RoutingProfile(filters=one, scorers=[], picker="round-robin"),
        "kv-only": RoutingProfile(
            filters=one, scorers=[ScorerWeight(name="kv-prefix", weight=1.0)]
        ),
    }


TENANT_SHARES = (0.5, 0.25, 0.15, 0.10)
"""A heavy tenant and three lighter ones (fractions of the conversations)."""

INTERACTIVE_SHARE = 0.3
"""Fraction of conversations in the ``interactive`` class (the rest are ``batch``)."""


def _unit(key: object, salt: str) -> float:
    """A deterministic number in [0, 1) for ``key``."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def family(req: TraceRequest, index: int) -> int:
    """The request's conversation family: its second prefix block (every Mooncake prompt
    starts with the same block; turns of one conversation share the second). A one-block
    prompt is its own family (``-1 - index``)."""
    return req.block_ids[1] if len(req.block_ids) > 1 else -1 - index


def tenant_of(req: TraceRequest, index: int) -> str:
    """Tenant label: the conversation family hashed onto `TENANT_SHARES` (``t0`` heaviest).

    The hash is salted by nothing, so the simulator's tables keep their labels."""
    key = family(req, index)
    u = int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")
    x, acc = u / 2**64, 0.0
    for i, share in enumerate(TENANT_SHARES):
        acc += share
        if x < acc:
            return f"t{i}"
    return f"t{len(TENANT_SHARES) - 1}"


def class_of(req: TraceRequest, index: int) -> str:
    """Priority class: ``interactive`` for `INTERACTIVE_SHARE` of the conversation families
    (by hash, so every turn of a conversation is in the same class), else ``batch``."""
    return "interactive" if _unit(family(req, index), "class") < INTERACTIVE_SHARE else "batch"


def thin_conversations(
    trace: Sequence[TraceRequest], keep_one_in: int, limit: int, salt: str = "thin"
) -> list[TraceRequest]:
    """Every request of one in ``keep_one_in`` conversation families, the first ``limit``.

    Why thin by conversation rather than take the first requests: a conversation's next turn
    comes a median of ~200 requests later in the Mooncake trace, so a slice of 100 consecutive
    requests holds almost no reuse beyond the shared first block, while keeping whole
    conversations (at a lower rate) keeps each one's turns together and the trace's prefix
    sharing with them. Keeps arrival order and times (the caller compresses time).
    """
    if keep_one_in < 1 or limit < 1:
        raise ValueError("keep_one_in and limit must be >= 1")
    out: list[TraceRequest] = []
    for i, req in enumerate(trace):
        if keep_one_in == 1 or int(_unit(family(req, i), salt) * keep_one_in) == 0:
            out.append(req)
            if len(out) == limit:
                break
    return out


def scale_outputs(
    trace: Sequence[TraceRequest], tokens_per_block: int, max_output: int
) -> list[TraceRequest]:
    """Output lengths shrunk by the prompts' ratio (``tokens_per_block`` / 512), rounded up,
    within [1, ``max_output``]: a scaled request keeps its prompt:output proportion."""
    if not 1 <= tokens_per_block <= TRACE_BLOCK_TOKENS or max_output < 1:
        raise ValueError("tokens_per_block must be in [1, 512] and max_output >= 1")
    return [
        dataclasses.replace(
            r,
            output_tokens=max(
                1, min(max_output, -(-r.output_tokens * tokens_per_block // TRACE_BLOCK_TOKENS))
            ),
        )
        for r in trace
    ]


def ideal_hit_rate(trace: Sequence[TraceRequest], max_blocks: int) -> float:
    """Share of prompt blocks (the first ``max_blocks`` of each) found by one unbounded cache
    holding every earlier prompt's prefixes: the ceiling for any router."""
    seen: set[tuple[int, ...]] = set()
    hit = total = 0
    for req in trace:
        ids = req.block_ids[:max_blocks]
        prefixes = [(req.namespace, *ids[: k + 1]) for k in range(len(ids))]
        depth = 0
        for p in prefixes:
            if p not in seen:
                break
            depth += 1
        seen.update(prefixes)
        hit += depth
        total += len(ids)
    return hit / total if total else 0.0


@dataclass(frozen=True)
class SLOFit:
    """Targets derived from the unloaded engine: TTFT ``factor * (base_s + per_token_s *
    prompt)`` (at least ``floor_ttft_s``), TPOT ``tpot_factor * tpot_s`` (at least
    ``floor_tpot_s``)."""

    base_s: float
    per_token_s: float
    tpot_s: float
    factor: float = 5.0
    tpot_factor: float = 5.0
    floor_ttft_s: float = 0.0
    floor_tpot_s: float = 0.0

    def __post_init__(self) -> None:
        if (
            min(self.base_s, self.per_token_s, self.tpot_s) < 0
            or min(self.factor, self.tpot_factor) <= 0
        ):
            raise ValueError("SLOFit: times must be >= 0 and factor > 0")

    def ttft_target(self, prompt_tokens: int) -> float:
        """Seconds to the first token allowed for a prompt of this many tokens."""
        raw = self.factor * (self.base_s + self.per_token_s * prompt_tokens)
        return max(self.floor_ttft_s, raw)

    def tpot_target(self) -> float:
        """Seconds per output token allowed after the first."""
        return max(self.floor_tpot_s, self.tpot_factor * self.tpot_s)


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` over ``(x, y)`` points, with ``a, b >= 0``."""
    if len(points) < 2:
        raise ValueError("need at least two points")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return max(0.0, my), 0.0
    b = max(0.0, sum((x - mx) * (y - my) for x, y in points) / sxx)
    return max(0.0, my - b * mx), b


def goodput(attainment: Mapping[float, float], target: float = TARGET) -> float:
    """The highest rate whose attainment, and every lower tested rate's, is >= ``target``;
    0 when the lowest rate already misses. Requiring the lower rates too keeps one lucky
    high-rate run (noise) from counting past a failed lower one."""
    best = 0.0
    for rate in sorted(attainment):
        if attainment[rate] < target:
            break
        best = rate
    return best


def jain(values: Sequence[float]) -> float:
    """Jain's fairness index: (sum x)^2 / (n * sum x^2); 1 = all equal, 1/n = one gets all.
    NaN for no values or all zero (undefined)."""
    if not values or not any(values):
        return math.nan
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


def attainment_by(labels: Sequence[str], met: Sequence[bool]) -> dict[str, float]:
    """Fraction of requests meeting their SLO per label, labels sorted."""
    if len(labels) != len(met):
        raise ValueError("labels and met must be the same length")
    groups: dict[str, list[bool]] = {}
    for label, ok in zip(labels, met, strict=True):
        groups.setdefault(label, []).append(ok)
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}


def rotated(items: Sequence[str], step: int) -> list[str]:
    """``items`` rotated left by ``step``: each policy takes each position in turn."""
    if not items:
        return []
    k = step % len(items)
    return [*items[k:], *items[:k]]
