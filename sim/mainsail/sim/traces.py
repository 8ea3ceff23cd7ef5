"""Trace loaders: real production arrivals, prompt/output lengths and prefix-block ids.

Why: policies are only as credible as the workload they are judged on. We replay the public
Mooncake conversation trace (which carries 512-token prefix-block ids, so prefix sharing is
real) and the Azure LLM 2023 code and conversation traces (arrivals and lengths only; every
prompt is unique). Files live in ``bench/data/`` with their attribution (see its README).

Scaling, applied in this order by `scale_trace`:

- ``rate_scale`` X superposes ``floor(X)`` independent copies of the trace (plus a random
  ``X - floor(X)`` share of one more copy). Each copy gets its own ``namespace``, as if
  X times as many users sent the same kind of traffic: the arrival rate grows X-fold while the
  time span, burst shape and within-population prefix sharing stay those of the trace.
- ``time_scale`` S divides every arrival time by S (S > 1 compresses the trace).
- ``jitter_s`` spreads arrivals uniformly inside ``[t, t + jitter_s)``; Mooncake timestamps
  are quantised to ~3 s steps, so its loader default is 3 s.
- ``duration_s`` keeps arrivals before that time.
"""

from __future__ import annotations

import csv
import json
import os
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

TRACE_BLOCK_TOKENS = 512
"""Tokens per Mooncake hash-id block."""

TRACE_FILES = {
    "mooncake": "mooncake_fast25_conversation_trace.jsonl",
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
}

_AZURE_ID_BASE = 1 << 40
"""Azure prompts get fresh block ids from here up, clear of any Mooncake id."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace.

    ``block_ids`` name the prompt's 512-token blocks; equal ids at equal positions mean an
    equal prefix. ``len(block_ids) == ceil(input_tokens / 512)``. Requests in different
    ``namespace``s (copies made by ``rate_scale``) never share content, even with equal ids;
    keeping the ids and the namespace apart lets copies share one tuple of ids in memory.
    """

    arrival_s: float
    input_tokens: int
    output_tokens: int
    block_ids: tuple[int, ...]
    namespace: int = 0


def default_data_dir() -> Path:
    """``$MAINSAIL_TRACE_DIR`` or the repository's ``bench/data``."""
    env = os.environ.get("MAINSAIL_TRACE_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "bench" / "data"


def load_mooncake(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Read the Mooncake JSONL trace (``timestamp`` in ms, ``hash_ids`` per 512 tokens)."""
    out: list[TraceRequest] = []
    with path.open() as fh:
        for line in fh:
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            ids = tuple(int(h) for h in row["hash_ids"])
            n_in = int(row["input_length"])
            if len(ids) != -(-n_in // TRACE_BLOCK_TOKENS):
                raise ValueError(f"{path}: hash_ids do not cover input_length in row {len(out)}")
            out.append(
                TraceRequest(
                    arrival_s=float(row["timestamp"]) / 1000.0,
                    input_tokens=n_in,
                    output_tokens=max(1, int(row["output_length"])),
                    block_ids=ids,
                )
            )
    return out


def _parse_azure_time(text: str) -> float:
    """Seconds since the epoch of ``YYYY-MM-DD HH:MM:SS.fffffff`` (7 fractional digits)."""
    head, _, frac = text.strip().partition(".")
    base = datetime.fromisoformat(head).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def load_azure(path: Path, limit: int | None = None) -> list[TraceRequest]:
    """Read an Azure LLM 2023 CSV; arrivals become seconds from the first row.

    Prompts carry no content information, so each request gets fresh block ids (no sharing).
    """
    out: list[TraceRequest] = []
    t0: float | None = None
    next_id = _AZURE_ID_BASE
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if limit is not None and len(out) >= limit:
                break
            t = _parse_azure_time(row["TIMESTAMP"])
            t0 = t if t0 is None else t0
            n_in = max(1, int(row["ContextTokens"]))
            n_blocks = -(-n_in // TRACE_BLOCK_TOKENS)
            out.append(
                TraceRequest(
                    arrival_s=t - t0,
                    input_tokens=n_in,
                    output_tokens=max(1, int(row["GeneratedTokens"])),
                    block_ids=tuple(range(next_id, next_id + n_blocks)),
                )
            )
            next_id += n_blocks
    return out


def load_trace(
    name: str, data_dir: Path | None = None, limit: int | None = None
) -> list[TraceRequest]:
    """Load a trace by name (``mooncake``, ``azure-code``, ``azure-conv``)."""
    if name not in TRACE_FILES:
        raise ValueError(f"unknown trace {name!r}; choose one of {sorted(TRACE_FILES)}")
    path = (data_dir or default_data_dir()) / TRACE_FILES[name]
    if not path.exists():
        raise ValueError(f"trace file {path} not found (set MAINSAIL_TRACE_DIR)")
    if name == "mooncake":
        return load_mooncake(path, limit)
    return load_azure(path, limit)


def default_jitter_s(name: str) -> float:
    """Mooncake timestamps come in ~3 s quanta; Azure's have 100 ns resolution."""
    return 3.0 if name == "mooncake" else 0.0


def scale_trace(
    trace: list[TraceRequest],
    *,
    rate_scale: float = 1.0,
    time_scale: float = 1.0,
    jitter_s: float = 0.0,
    duration_s: float | None = None,
    seed: int = 0,
) -> list[TraceRequest]:
    """Apply rate multiplier, time compression, jitter and a duration cut (see module doc)."""
    if rate_scale <= 0 or time_scale <= 0 or jitter_s < 0:
        raise ValueError("rate_scale and time_scale must be > 0 and jitter_s >= 0")
    rng = random.Random(seed)
    copies = int(rate_scale)
    fraction = rate_scale - copies
    out: list[TraceRequest] = []
    copies_stride = 1 + max((r.namespace for r in trace), default=0)
    for k in range(copies + (1 if fraction > 0 else 0)):
        partial = k == copies
        for req in trace:
            if partial and rng.random() >= fraction:
                continue
            arrival = req.arrival_s + (rng.random() * jitter_s if jitter_s else 0.0)
            out.append(
                TraceRequest(
                    arrival_s=arrival / time_scale,
                    input_tokens=req.input_tokens,
                    output_tokens=req.output_tokens,
                    block_ids=req.block_ids,
                    namespace=req.namespace + k * copies_stride,
                )
            )
    out.sort(key=lambda r: r.arrival_s)
    if duration_s is not None:
        out = [r for r in out if r.arrival_s < duration_s]
    return out
