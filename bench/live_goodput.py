"""Goodput on the real local stack: the highest request rate at which >= 90 % of requests meet
their TTFT and TPOT SLOs, for this router's default profile and the baselines, on scaled
slices of the Mooncake and both Azure (conversation, code) traces (the live half of issue 14;
`bench/sim_goodput.py` is the simulated half and uses the same policy names,
`mainsail.sim.goodput`).

The stack (loopback, each part its own process): `--workers` real workers (the real engine
on the generated `--model-size` Llama checkpoint, CPU, one torch thread each, no Redis tier
so every cache hit is the router's doing) and one real router per policy, every worker
registered with every router (as `mainsail up --routers N` registers them). A policy is the
router the replay is sent to, so all policies share the same workers and the same moment's
machine load. Each replay uses prompts of its own (a fresh namespace of the trace's block
ids), so no run finds another run's cache.

Scaling (what the trace becomes, printed with the results):
- prompts: each 512-token trace block becomes `--tokens-per-block` deterministic tokens, at
  most `--max-blocks` blocks; equal block ids give equal tokens, so requests share exactly
  the prefixes the trace says they share. Outputs shrink by the same ratio (at most
  `--max-output` tokens), keeping the prompt:output proportion.
- slice: Mooncake keeps every request of one in `--keep-one-in` conversations (so turns of a
  conversation stay together and the trace's reuse survives a short slice), the first
  `--requests` of them; Azure (no shared prefixes) its first `--requests` requests from
  `--start` (Azure code: from 29 s, its first busy stretch, past a 28 s lull).
- time: the slice's arrivals (Mooncake's 3 s timestamp quanta jittered as the simulator does)
  compressed so its mean rate is each tested rate.
- tenants and classes: a request's conversation family (Mooncake) hashed onto four tenants
  of 50/25/15/10 % (`x-mainsail-fairness-id`) and onto `interactive` (30 %, priority 10) or
  `batch` (priority 0), sent as `slo_class`, so the router's flow control and the engine's
  priority ordering act on them.
- SLOs: measured in the same run on the idle stack (sequential requests, fresh prompts of
  two lengths, medians): TTFT <= `--slo-factor` (5) x (unloaded TTFT at that prompt length),
  TPOT <= `--tpot-factor` (10) x unloaded TPOT; sent with each request
  (`x-mainsail-ttft-ms` / `-tpot-ms`). TPOT gets the larger factor because the tiny model's
  decode step (~2 ms) is mostly interpreter overhead and one 256-token prefill chunk in a
  step stalls every decode of the batch by ~30 ms; the simulator's H100 SLO (100 ms) is
  likewise ~10x an unloaded decode step.

Per rate step every policy runs once per repeat, the policy order rotated each time, so the
machine's drift hits them alike. Printed per trace: goodput (median over repeats of each
repeat's goodput), attainment at each rate (median), prefix hit rate; at the default
profile's goodput rate: attainment per class and tenant, Jain's index over the tenants, TTFT
p50/p90; every policy paired with `--baseline` (least-work, the bar) repeat by repeat: led /
trailed / tied, median difference in points, median TTFT p90 ratio. PNG plots of attainment
vs rate go to `--img` (tables and plots: `bench/goodput_report.py`). The load average is
sampled at every replay and printed. Bounded: per request, per replay, and `--max-minutes` for
the whole run (rate steps past it are skipped and said so).

    .venv/bin/python bench/live_goodput.py              # three traces, ~25 min
    .venv/bin/python bench/live_goodput.py --quick      # smoke check, ~3 min
    .venv/bin/python bench/live_goodput.py --traces mooncake --rates mooncake=5,6.5,8 \
        --policies "ours (default),least-work" --repeats 5 \
        --extra 'no counts={"scorers": [{"name": "prefill-time", "weight": 2}]}'
                                                        # a weight change against the bar
    .venv/bin/python bench/live_goodput.py --traces mooncake --rates mooncake=5,6.5,8 \
        --policies "ours (default),least-work" --repeats 5 --step-cost cpu-tiny \
        --extra 'ttft={"scorers": [{"name": "ttft", "weight": 1}]}'
                                                        # the `ttft` scorer with a step cost

Figures and what they show: docs/benchmarks.md, "Goodput vs request rate, per routing policy
(live, tiny CPU model)".
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from goodput_report import Run, TraceResult, paired_table, percentile, plot, report
from goodput_stack import MODEL, Stack

from mainsail.sim.goodput import (
    OURS,
    POLICY_LABELS,
    SLOFit,
    attainment_by,
    class_of,
    fit_line,
    ideal_hit_rate,
    rotated,
    scale_outputs,
    tenant_of,
    thin_conversations,
)
from mainsail.sim.live import (
    Extras,
    HttpSender,
    LiveRequest,
    LiveResult,
    PromptScaling,
    ReplaySettings,
    build_requests,
    replay,
)
from mainsail.sim.traces import TraceRequest, default_jitter_s, load_trace, scale_trace
from mainsail.spec.routing_profile import RoutingProfile
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV, generate_token

KEEP_ONE_IN = {"mooncake": 16, "azure-conv": 1, "azure-code": 1}
REQUESTS = "mooncake=48;azure-conv=64;azure-code=48"
"""Azure conversation requests are short (~90 tokens scaled, no shared prefixes): more of them
keep a replay at their higher rates a few seconds long instead of one burst."""
START = "azure-code=29"
"""Trace seconds skipped before the slice. Azure code opens with 12 requests, then 28 s of
nothing: replayed as is, that lull would be most of every replay's wall time."""
RATES = "mooncake=3.5,5,6.5;azure-conv=12,18,24;azure-code=4,8,12"


# ---------------------------------------------------------------- sending


@dataclass(frozen=True)
class Meta:
    """What a request carries besides its prompt: who sends it and its targets."""

    tenant: str
    slo_class: str
    ttft_s: float
    tpot_s: float


def meta_extras(metas: Sequence[Meta]) -> Extras:
    """The request's class (body), tenant and SLO targets (headers), for `HttpSender`."""

    def extras(res: LiveResult) -> tuple[dict[str, object], dict[str, str]]:
        meta = metas[res.index]
        headers = {
            "x-mainsail-fairness-id": meta.tenant,
            "x-mainsail-ttft-ms": f"{1000 * meta.ttft_s:.3f}",
            "x-mainsail-tpot-ms": f"{1000 * meta.tpot_s:.3f}",
        }
        return {"slo_class": meta.slo_class}, headers

    return extras


async def _send_all(
    base: str, requests: list[LiveRequest], metas: Sequence[Meta], settings: ReplaySettings
) -> list[LiveResult]:
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    timeout = httpx.Timeout(settings.request_timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
        return await replay(requests, HttpSender(client, MODEL, meta_extras(metas)), settings)


def met_slo(res: LiveResult, meta: Meta) -> tuple[bool, bool]:
    """(TTFT, TPOT) within their targets; TTFT from the scheduled arrival. A request that
    failed or did not finish meets neither."""
    if res.error or math.isnan(res.finished) or math.isnan(res.first_token):
        return False, False
    ttft = res.first_token - res.arrival
    tpot = (res.finished - res.first_token) / max(1, res.completion_tokens - 1)
    return ttft <= meta.ttft_s, tpot <= meta.tpot_s


# ---------------------------------------------------------------- calibration


def calibrate(base: str, scaling: PromptScaling, args: argparse.Namespace) -> SLOFit:
    """Unloaded TTFT at two prompt lengths (a line through the medians at each) and TPOT
    (median), from sequential requests on the idle stack, the first of each length a warm-up."""
    short = max(16, scaling.tokens_per_block)
    long = scaling.tokens_per_block * scaling.max_blocks
    points: list[tuple[float, float]] = []
    tpots: list[float] = []
    ns = 900_000
    for rep in range(args.calibration_repeats):
        for length in (short, long):
            ns += 1
            blocks = -(-length // scaling.tokens_per_block)
            trace = [
                TraceRequest(
                    0.0, length * 512 // scaling.tokens_per_block, 16, tuple(range(blocks)), ns
                )
            ]
            reqs = build_requests(trace, scaling)
            meta = [Meta("calibration", "batch", 600.0, 60.0)]
            res = asyncio.run(_send_all(base, reqs, meta, ReplaySettings(1, 60.0, 60.0)))[0]
            if res.error:
                raise RuntimeError(f"calibration request failed: {res.error}")
            if rep == 0:
                continue  # warm-up (first use of each shape)
            points.append((len(reqs[0].prompt_token_ids), res.first_token - res.sent))
            tpots.append((res.finished - res.first_token) / max(1, res.completion_tokens - 1))
    by_length: dict[float, list[float]] = {}
    for x, y in points:
        by_length.setdefault(x, []).append(y)
    a, b = fit_line([(x, statistics.median(ys)) for x, ys in by_length.items()])
    return SLOFit(
        a, b, statistics.median(tpots), factor=args.slo_factor, tpot_factor=args.tpot_factor
    )


# ---------------------------------------------------------------- one trace


def one_run(
    base: str,
    slice_: list[TraceRequest],
    namespace: int,
    rate: float,
    base_rps: float,
    fit: SLOFit,
    scaling: PromptScaling,
    args: argparse.Namespace,
) -> Run:
    trace = [dataclasses.replace(r, namespace=namespace) for r in slice_]
    requests = build_requests(trace, scaling, time_scale=rate / base_rps)
    metas = [
        Meta(
            tenant_of(r, i),
            class_of(r, i),
            fit.ttft_target(len(q.prompt_token_ids)),
            fit.tpot_target(),
        )
        for i, (r, q) in enumerate(zip(slice_, requests, strict=True))
    ]
    span = requests[-1].arrival_s if requests else 0.0
    settings = ReplaySettings(len(requests), span + args.drain_seconds, args.request_timeout)
    load = os.getloadavg()[0]
    results = asyncio.run(_send_all(base, requests, metas, settings))
    both = [met_slo(res, metas[res.index]) for res in results]
    both += [(False, False)] * (len(requests) - len(results))  # never sent within the bound
    met = [a and b for a, b in both]
    ttfts = sorted(
        res.first_token - res.arrival for res in results if not math.isnan(res.first_token)
    )
    prompt = sum(res.prompt_tokens for res in results if not res.error)
    return Run(
        attainment=sum(met) / len(met),
        ttft_met=sum(a for a, _ in both) / len(both),
        tpot_met=sum(b for _, b in both) / len(both),
        by_class=attainment_by([m.slo_class for m in metas], met),
        by_tenant=attainment_by([m.tenant for m in metas], met),
        hit_rate=sum(res.cached_tokens for res in results if not res.error) / max(1, prompt),
        ttft_p50=percentile(ttfts, 0.5),
        ttft_p90=percentile(ttfts, 0.9),
        errors=sum(1 for res in results if res.error),
        load=load,
    )


def build_slice(name: str, args: argparse.Namespace) -> tuple[list[TraceRequest], float]:
    """The trace slice (arrivals from 0) and its mean rate at 1x in requests/s."""
    full = load_trace(name)
    full = [r for r in full if r.arrival_s >= args.start[name]]
    keep = args.keep_one_in if args.keep_one_in else KEEP_ONE_IN[name]
    slice_ = thin_conversations(full, keep, args.requests[name])
    slice_ = scale_trace(slice_, jitter_s=default_jitter_s(name), seed=args.seed)
    slice_.sort(key=lambda r: r.arrival_s)
    t0 = slice_[0].arrival_s
    slice_ = [dataclasses.replace(r, arrival_s=r.arrival_s - t0) for r in slice_]
    slice_ = scale_outputs(slice_, args.tokens_per_block, args.max_output)
    span = slice_[-1].arrival_s
    return slice_, len(slice_) / max(span, 1e-9)


def run_trace(
    name: str,
    stack: Stack,
    labels: list[str],
    rates: list[float],
    fit: SLOFit,
    scaling: PromptScaling,
    args: argparse.Namespace,
    deadline: float,
    trace_index: int,
) -> TraceResult:
    slice_, base_rps = build_slice(name, args)
    ideal = ideal_hit_rate(slice_, args.max_blocks)
    runs: dict[tuple[str, float], list[Run]] = {}
    done: list[float] = []
    step = 0
    for rate in rates:
        if time.monotonic() > deadline:
            print(f"  ({name}: rate {rate:g} and above skipped: --max-minutes reached)")
            break
        for rep in range(args.repeats):
            for label in rotated(labels, step):
                ns = 1 + trace_index * 1_000_000 + step * 100 + labels.index(label)
                run = one_run(stack.http[label], slice_, ns, rate, base_rps, fit, scaling, args)
                runs.setdefault((label, rate), []).append(run)
                print(
                    f"  {name} {rate:g} req/s rep {rep} {label}: SLO {100 * run.attainment:.0f} %,"
                    f" (TTFT {100 * run.ttft_met:.0f} %, TPOT {100 * run.tpot_met:.0f} %),"
                    f" hit {100 * run.hit_rate:.0f} %, TTFT p50 {1000 * run.ttft_p50:.0f} ms"
                    f" p90 {1000 * run.ttft_p90:.0f} ms, errors {run.errors}, load {run.load:.1f}",
                    flush=True,
                )
                time.sleep(args.pause)
            step += 1
        done.append(rate)
    keep = args.keep_one_in or KEEP_ONE_IN[name]
    return TraceResult(name, slice_, base_rps, ideal, done, runs, keep)


# ---------------------------------------------------------------- main


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _per_trace(spec: str, name: str, option: str) -> str:
    """``name``'s value in ``'trace=value;trace=value'``; a bare value holds for every trace."""
    if "=" not in spec:
        return spec
    for part in spec.split(";"):
        key, _, value = part.partition("=")
        if key.strip() == name:
            return value
    raise SystemExit(f"{option} has no entry for {name}")


def _rates(spec: str, name: str) -> list[float]:
    return sorted(float(v) for v in _per_trace(spec, name, "--rates").split(","))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default="mooncake,azure-conv,azure-code")
    ap.add_argument("--policies", default=",".join(POLICY_LABELS))
    ap.add_argument(
        "--rates",
        default=RATES,
        help="Request rates (req/s) per trace: 'trace=r1,r2;trace=...'",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--baseline",
        default="least-work",
        help="The policy every other one is paired with, repeat by repeat (the bar).",
    )
    ap.add_argument(
        "--requests",
        default=REQUESTS,
        help="Requests in each trace slice: one number, or per trace as 'trace=n;trace=n'.",
    )
    ap.add_argument(
        "--start",
        default=START,
        help="Trace seconds skipped before each slice, per trace as 'trace=s;trace=s' (others 0).",
    )
    ap.add_argument("--keep-one-in", type=int, default=0, help="Conversations kept (0: per trace).")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model-size", choices=["tiny", "small"], default="tiny")
    ap.add_argument("--kv-blocks", type=int, default=4096, help="KV blocks (16 tokens) per worker.")
    ap.add_argument("--tokens-per-block", type=int, default=64)
    ap.add_argument("--max-blocks", type=int, default=24)
    ap.add_argument("--max-output", type=int, default=32)
    ap.add_argument("--slo-factor", type=float, default=5.0, help="TTFT target / unloaded TTFT.")
    ap.add_argument("--tpot-factor", type=float, default=10.0, help="TPOT target / unloaded TPOT.")
    ap.add_argument("--calibration-repeats", type=int, default=9)
    ap.add_argument("--drain-seconds", type=float, default=20.0, help="Replay bound past its span.")
    ap.add_argument("--request-timeout", type=float, default=30.0)
    ap.add_argument("--pause", type=float, default=0.5, help="Seconds between two replays.")
    ap.add_argument("--max-minutes", type=float, default=30.0, help="Whole-run bound.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help='Another policy: a label and a RoutingProfile as JSON, e.g. \'no-counts={"scorers":'
        ' [{"name": "prefill-time", "weight": 2}]}\' (to test a change of weights).',
    )
    ap.add_argument(
        "--step-cost",
        default="",
        metavar="PROFILE",
        help="Give every router this simulator profile's step cost model (e.g. cpu-tiny, "
        "measured on this machine) with the engine's batch limits, as "
        "spec.router.admission.stepCost at headroom 100 (predictions on, refusals out of "
        "reach): the `ttft` scorer replays it. Default: none (that scorer then prices "
        "prefill only).",
    )
    ap.add_argument("--img", type=Path, help="Where the PNGs go (default docs/img; --quick: out/).")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="Smoke check: the 2 highest rates, 1 repeat, 24 requests, ~3-4 min.",
    )
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.requests, args.calibration_repeats = 1, "24", 4
        args.max_minutes = min(args.max_minutes, 4.0)
    if args.img is None:
        args.img = Path("out/live_goodput" if args.quick else "docs/img")
    labels = [p.strip() for p in args.policies.split(",")]
    extra: dict[str, RoutingProfile] = {}
    for item in args.extra:
        name, _, doc = item.partition("=")
        extra[name] = RoutingProfile.model_validate_json(doc)
        labels.append(name)
    unknown = [p for p in labels if p not in POLICY_LABELS and p not in extra]
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; known: {', '.join(POLICY_LABELS)}")
    names = args.traces.split(",")
    rates = {n: _rates(args.rates, n) for n in names}
    args.requests = {n: int(_per_trace(args.requests, n, "--requests")) for n in names}
    starts = {k.strip(): float(v) for k, _, v in (p.partition("=") for p in args.start.split(";"))}
    args.start = {n: starts.get(n, 0.0) for n in names}
    if args.quick:
        rates = {n: r[-2:] for n, r in rates.items()}
    os.environ.setdefault(WORKER_TOKEN_ENV, generate_token())
    signal.signal(signal.SIGTERM, _terminate)  # stop the stack on `timeout`/kill too
    scaling = PromptScaling(args.tokens_per_block, args.max_blocks, 500, 3, args.max_output)
    t0 = time.monotonic()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="live-goodput-") as tmp:
        stack = Stack(Path(tmp), args)
        try:
            stack.start(labels, extra)
            print(f"stack up in {time.monotonic() - t0:.0f} s", flush=True)
            fit = calibrate(stack.http[OURS if OURS in labels else labels[0]], scaling, args)
            print(
                f"unloaded: TTFT {1000 * fit.base_s:.1f} ms + {1e6 * fit.per_token_s:.1f} us/token,"
                f" TPOT {1000 * fit.tpot_s:.2f} ms -> SLO TTFT x{fit.factor:g}:"
                f" {1000 * fit.ttft_target(args.tokens_per_block):.0f}-"
                f"{1000 * fit.ttft_target(args.tokens_per_block * args.max_blocks):.0f} ms,"
                f" TPOT x{fit.tpot_factor:g}: {1000 * fit.tpot_target():.1f} ms",
                flush=True,
            )
            deadline = t0 + 60 * args.max_minutes
            results = [
                run_trace(n, stack, labels, rates[n], fit, scaling, args, deadline, i)
                for i, n in enumerate(names)
            ]
        finally:
            stack.stop()
    args.img.mkdir(parents=True, exist_ok=True)
    print(
        f"\n# Live goodput: {args.workers} workers ({args.model_size} generated Llama, CPU), one"
        f" router per policy, {args.tokens_per_block} tokens per 512-token trace block (at most"
        f" {args.max_blocks} blocks), outputs x{args.tokens_per_block}/512 (at most"
        f" {args.max_output}), SLO: TTFT {args.slo_factor:g} x and TPOT {args.tpot_factor:g} x"
        f" unloaded (TTFT"
        f" {1000 * fit.base_s:.1f} ms + {1e6 * fit.per_token_s:.1f} us/token, TPOT"
        f" {1000 * fit.tpot_s:.2f} ms)"
    )
    for result in results:
        print(report(result, labels, scaling, args.repeats))
        print(paired_table(result, labels, args.baseline))
        title = f"{result.name}, live: {args.workers} x {args.model_size} CPU model, 2 shared cores"
        plot(result, labels, args.img / f"live_goodput_{result.name}.png", title)
    print(f"\n(wall time {time.monotonic() - t0:.0f} s; plots in {args.img}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
