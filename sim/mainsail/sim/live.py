"""Live replay: the simulator's traces sent to a running Mainsail, measured at the client.

Why: the simulator predicts; this measures. The same trace (`mainsail.sim.traces`) and the same
synthesised prompts (`mainsail.sim.prompts`, so requests share exactly the prefixes the trace
says they share) go to a real router over OpenAI HTTP (`/v1/completions`, streamed, prompt as
token ids) or gRPC (`Inference.Generate`), open-loop at the trace's (time-scaled) arrival
times. The figures come out of the simulator's own `summarise`, so both reports mean the same
thing: each live request becomes a `SimRequest` record carrying its client-side timestamps.

What the client measures, in seconds from the request's *scheduled* arrival (so a late send
counts against the server side as it would for a user, and the send lag is reported apart):
TTFT (first streamed token), TPOT (mean gap between later tokens, from ``usage``), end to end,
prefix hit rate (``usage.cached_tokens``) and which worker served it (``X-Mainsail-Worker``
header or ``GenerateResponse.worker_id``). Queueing inside the server is not visible from the
client and reports as "—".

Everything is bounded: request count, wall time of the whole replay and time per request; a
request cut by a bound counts as unfinished (an SLO miss), never silently dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
import httpx

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.sim.metrics import SLOTargets, Summary, summarise
from mainsail.sim.prompts import trace_block_tokens
from mainsail.sim.report import render_markdown
from mainsail.sim.request import SimRequest
from mainsail.sim.simulation import RunResult
from mainsail.sim.traces import TRACE_BLOCK_TOKENS, TraceRequest
from mainsail.spec import sse


@dataclass(frozen=True)
class PromptScaling:
    """How trace prompts shrink to fit a small model's context.

    Each 512-token trace block becomes its first ``tokens_per_block`` synthesised tokens, at
    most ``max_blocks`` blocks per prompt, ids in ``[token_offset, token_offset + vocab_size)``
    (clear of the tokenizer's special ids). Output lengths are capped at ``max_output_tokens``.
    """

    tokens_per_block: int = 32
    max_blocks: int = 24
    vocab_size: int = 500
    token_offset: int = 3
    max_output_tokens: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.tokens_per_block <= TRACE_BLOCK_TOKENS:
            raise ValueError(f"tokens_per_block must be in [1, {TRACE_BLOCK_TOKENS}]")
        if self.max_blocks < 1 or self.vocab_size < 1 or self.max_output_tokens < 1:
            raise ValueError("max_blocks, vocab_size and max_output_tokens must be >= 1")
        if self.token_offset < 0:
            raise ValueError("token_offset must be >= 0")


@dataclass(frozen=True)
class LiveRequest:
    """One request to send: when (seconds after the replay starts), what, how much back."""

    arrival_s: float
    prompt_token_ids: tuple[int, ...]
    max_tokens: int


@dataclass
class LiveResult:
    """What the client saw of one request; times in seconds from the replay's start."""

    index: int
    arrival: float
    prompt_tokens: int
    sent: float = math.nan
    first_token: float = math.nan
    finished: float = math.nan
    completion_tokens: int = 0
    cached_tokens: int = 0
    worker: str = ""
    error: str = ""


@dataclass(frozen=True)
class ReplaySettings:
    """Bounds of one replay: count, total wall seconds, seconds per request."""

    max_requests: int = 1000
    max_seconds: float = 300.0
    request_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.max_seconds <= 0 or self.request_timeout_s <= 0:
            raise ValueError("replay bounds must be positive")


def build_requests(
    trace: Sequence[TraceRequest], scaling: PromptScaling, time_scale: float = 1.0
) -> list[LiveRequest]:
    """Scaled prompts for ``trace``; arrivals start at 0 and are divided by ``time_scale``."""
    if time_scale <= 0:
        raise ValueError("time_scale must be > 0")
    if not trace:
        return []
    start = trace[0].arrival_s
    out: list[LiveRequest] = []
    for req in trace:
        wanted = -(-req.input_tokens * scaling.tokens_per_block // TRACE_BLOCK_TOKENS)
        wanted = max(1, min(wanted, scaling.max_blocks * scaling.tokens_per_block))
        ids: list[int] = []
        for block_id in req.block_ids:
            if len(ids) >= wanted:
                break
            block = trace_block_tokens(
                block_id, vocab_size=scaling.vocab_size, namespace=req.namespace
            )
            ids.extend(t + scaling.token_offset for t in block[: scaling.tokens_per_block])
        out.append(
            LiveRequest(
                arrival_s=(req.arrival_s - start) / time_scale,
                prompt_token_ids=tuple(ids[:wanted]),
                max_tokens=min(req.output_tokens, scaling.max_output_tokens),
            )
        )
    return out


Send = Callable[[LiveRequest, LiveResult, Callable[[], float]], Awaitable[None]]
"""Sends one request and fills in its result; the callable is the replay's clock."""


Extras = Callable[[LiveResult], tuple[Mapping[str, object], Mapping[str, str]]]
"""Per-request additions to an HTTP request: body fields and headers (e.g. an SLO class, a
tenant, targets), looked up by the result's index."""


class HttpSender:
    """OpenAI ``/v1/completions`` with ``stream: true`` through an injected httpx client."""

    def __init__(self, client: httpx.AsyncClient, model: str, extras: Extras | None = None) -> None:
        self.client = client
        self.model = model
        self.extras = extras

    async def __call__(self, req: LiveRequest, res: LiveResult, now: Callable[[], float]) -> None:
        body = {
            "model": self.model,
            "prompt": list(req.prompt_token_ids),
            "max_tokens": req.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "ignore_eos": True,
        }
        more, headers = self.extras(res) if self.extras is not None else ({}, {})
        body.update(more)
        async with self.client.stream(
            "POST", "/v1/completions", json=body, headers=dict(headers)
        ) as resp:
            res.worker = resp.headers.get("x-mainsail-worker", "")
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return
            async for event in sse.json_events(resp.aiter_lines()):
                if "error" in event:
                    res.error = str(event["error"])[:200]
                    return
                if event.get("choices"):
                    if math.isnan(res.first_token):
                        res.first_token = now()
                    res.completion_tokens += 1
                usage = event.get("usage")
                if usage:
                    res.completion_tokens = usage.get("completion_tokens", res.completion_tokens)
                    details = usage.get("prompt_tokens_details") or {}
                    res.cached_tokens = details.get("cached_tokens") or 0
        res.finished = now()


class GrpcSender:
    """``mainsail.proto.v1.Inference.Generate`` with prompt token ids."""

    def __init__(self, channel: grpc.aio.Channel, model: str) -> None:
        self.stub = pb_grpc.InferenceStub(channel)
        self.model = model

    async def __call__(self, req: LiveRequest, res: LiveResult, now: Callable[[], float]) -> None:
        request = pb.GenerateRequest(
            model=self.model,
            prompt_token_ids=req.prompt_token_ids,
            sampling=pb.SamplingParams(max_tokens=req.max_tokens, temperature=0, ignore_eos=True),
        )
        try:
            async for response in self.stub.Generate(request):
                res.worker = response.worker_id or res.worker
                if response.error:
                    res.error = response.error[:200]
                    return
                if response.token_ids and math.isnan(res.first_token):
                    res.first_token = now()
                if response.finish_reason:
                    res.completion_tokens = response.usage.completion_tokens
                    res.cached_tokens = response.usage.cached_tokens
        except grpc.aio.AioRpcError as exc:
            res.error = f"{exc.code().name}: {exc.details()}"[:200]
            return
        res.finished = now()


async def replay(
    requests: Sequence[LiveRequest],
    send: Send,
    settings: ReplaySettings = ReplaySettings(),
    clock: Callable[[], float] = time.perf_counter,
) -> list[LiveResult]:
    """Sends each request at its arrival time (open loop) and waits for all, within bounds.

    Requests whose arrival falls after ``max_seconds`` are not sent and are not returned.
    """
    t0 = clock()

    def now() -> float:
        return clock() - t0

    async def one(req: LiveRequest, res: LiveResult) -> None:
        res.sent = now()
        try:
            await asyncio.wait_for(send(req, res, now), settings.request_timeout_s)
        except TimeoutError:
            res.error = res.error or f"no answer within {settings.request_timeout_s:g} s"
        except (httpx.HTTPError, OSError, ValueError) as exc:
            res.error = f"{type(exc).__name__}: {exc}"[:200]
        if res.error:
            res.finished = math.nan

    results: list[LiveResult] = []
    tasks: list[asyncio.Task[None]] = []
    for i, req in enumerate(requests[: settings.max_requests]):
        if req.arrival_s >= settings.max_seconds:
            break
        delay = req.arrival_s - now()
        if delay > 0:
            await asyncio.sleep(delay)
        res = LiveResult(index=i, arrival=req.arrival_s, prompt_tokens=len(req.prompt_token_ids))
        results.append(res)
        tasks.append(asyncio.create_task(one(req, res)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, settings.max_seconds - now()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for res in results:
        if math.isnan(res.finished) and not res.error:
            res.error = f"unfinished when the replay's {settings.max_seconds:g} s ran out"
    return results


@dataclass(frozen=True)
class LiveSummary:
    """The simulator's `Summary` of a live run, plus what only a live run has."""

    summary: Summary
    errors: Counter[str] = field(default_factory=Counter)
    served: dict[str, int] = field(default_factory=dict)
    send_lag_p99_s: float = math.nan


def summarise_live(
    results: Sequence[LiveResult],
    slo: SLOTargets,
    label: str,
    wall_s: float,
    workers: Sequence[str] = (),
) -> LiveSummary:
    """Figures of a replay, computed by `mainsail.sim.metrics.summarise`.

    ``workers`` names workers known to exist, so one that served nothing counts in the spread.
    """
    records: list[SimRequest] = []
    for res in results:
        rec = SimRequest(
            res.index, res.arrival, max(1, res.prompt_tokens), max(1, res.completion_tokens), []
        )
        rec.started = res.sent  # admission is invisible to a client: "queue" is blanked below
        rec.first_token, rec.finished = res.first_token, res.finished
        rec.cached_tokens = res.cached_tokens
        records.append(rec)
    served = Counter({w: 0 for w in workers})
    served.update(r.worker for r in results if r.worker and not r.error)
    run = RunResult(
        policy=label,
        requests=records,
        served=list(served.values()),
        busy_s=[],
        sample_times=[],
        load_samples=[],
        end_time=max((r.finished for r in results if not math.isnan(r.finished)), default=0.0),
        wall_s=wall_s,
    )
    nan3 = (math.nan, math.nan, math.nan)
    summary = dataclasses.replace(summarise(run, slo), queue=nan3)
    lags = sorted(r.sent - r.arrival for r in results if not math.isnan(r.sent))
    return LiveSummary(
        summary=summary,
        errors=Counter(r.error.split(":")[0] for r in results if r.error),
        served=dict(sorted(served.items())),
        send_lag_p99_s=lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else math.nan,
    )


def render_live(lives: Sequence[LiveSummary], slo: SLOTargets, setup: dict[str, object]) -> str:
    """The simulator's Markdown report for live runs, plus errors, spread and send lag."""
    text = render_markdown([s.summary for s in lives], slo, setup)
    text = text.replace("# Mainsail cluster simulation", "# Mainsail live replay", 1)
    text = text.replace("| simulated in (s) |", "| replayed in (s) |", 1)
    lines = ["", "| run | served per worker | errors | send lag p99 ms |", "|---|---|---|---:|"]
    for s in lives:
        errors = ", ".join(f"{k} x{v}" for k, v in s.errors.items()) or "none"
        lines.append(
            f"| {s.summary.policy} | {s.served} | {errors} | {1000 * s.send_lag_p99_s:.1f} |"
        )
    return text + "\n".join(lines) + "\n"
