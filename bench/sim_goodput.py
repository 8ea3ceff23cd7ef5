"""Goodput in the simulator: the highest request rate at which >= 90 % of requests meet their
TTFT and TPOT SLOs, for this router's default profile and the baselines, on real traces.

Per trace, a window of the trace is replayed at a grid of rates (the window compressed in time:
rate x2 = the same requests in half the time, same prefix sharing) on a fixed simulated
cluster, for each policy and seed. Printed per trace and policy: the median (over seeds) of the
highest rate meeting the 90 % target ("goodput", requests/s), attainment at each rate, and at
the default profile's goodput rate: SLO attainment per class and per tenant and Jain's
fairness index over the tenants' attainment. PNG: attainment vs rate, one line per policy.

Classes and tenants are labels for slicing the results, not scheduling inputs: the simulator
applies no priorities (the engine's deadline ordering and the router's flow control are not
simulated). Class = ``long`` for prompts over 8k tokens, else ``short``; tenant = the
request's conversation family (its second prefix block; Azure prompts share nothing, so
there it is random) hashed onto four tenants of 50/25/15/10 % of the requests.
SLO: TTFT <= 2 s + 0.1 s per 1k prompt tokens, TPOT <= 100 ms.

    .venv/bin/python bench/sim_goodput.py                    # both traces, ~10-20 min
    .venv/bin/python bench/sim_goodput.py --traces mooncake --seeds 1 --window 600
    .venv/bin/python bench/sim_goodput.py --traces mooncake --seeds 9 \
        --extra 'ttft only={"scorers": [{"name": "prefill-time", "weight": 1}]}'
    .venv/bin/python bench/sim_goodput.py --traces mooncake --seeds 9 \
        --policies "ours (default),least-work" --extra 'ttft={"scorers": [{"name": "ttft"}]}'
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mainsail.sim.cost import load_profile
from mainsail.sim.goodput import OURS, SIM_POLICIES, TARGET, goodput, jain, tenant_of
from mainsail.sim.metrics import SLOTargets, summarise
from mainsail.sim.prompts import PromptHasher
from mainsail.sim.simulation import RunResult, SimSettings, run_policy
from mainsail.sim.traces import TraceRequest, default_jitter_s, load_trace, scale_trace
from mainsail.spec.routing_profile import RoutingProfile

POLICIES = SIM_POLICIES  # labels shared with bench/live_goodput.py (mainsail.sim.goodput)
CLUSTER = {"mooncake": 4, "azure-conv": 2, "azure-code": 2}  # H100 workers per trace
RATES = {
    "mooncake": (0.5, 0.75, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5),
    "azure-conv": (4.0, 5.0, 6.0, 6.5, 7.0, 7.5, 8.0),
    "azure-code": (4.0, 5.0, 6.0, 6.5, 7.0, 7.5, 8.0),
}
LONG_PROMPT = 8192


Slice = dict[str, float]


def _slices(run: RunResult, slo: SLOTargets, trace: list[TraceRequest]) -> tuple[Slice, Slice]:
    """SLO attainment per class and per tenant (fraction of each slice's requests)."""
    met: dict[str, dict[str, list[bool]]] = {"class": {}, "tenant": {}}
    for req, tr in zip(run.requests, trace, strict=True):
        ok = not math.isnan(req.finished) and (
            req.ttft <= slo.ttft_s + slo.ttft_per_1k_tokens_s * req.input_tokens / 1000
            and req.tpot <= slo.tpot_s
        )
        cls = "long" if req.input_tokens > LONG_PROMPT else "short"
        tenant = tenant_of(tr, req.index)
        met["class"].setdefault(cls, []).append(ok)
        met["tenant"].setdefault(tenant, []).append(ok)
    per = {k: {s: sum(v) / len(v) for s, v in sorted(d.items())} for k, d in met.items()}
    return per["class"], per["tenant"]


@dataclass(frozen=True)
class _Cell:
    """One simulation of the grid: a trace at a rate, a seed and a policy."""

    trace: str
    seed: int
    rate: float
    label: str
    policy: str
    routing: RoutingProfile | None
    workers: int
    window: float
    block_size: int


@functools.cache
def _trace(name: str) -> list[TraceRequest]:
    """One load per process (read-only afterwards)."""
    return load_trace(name)


@functools.cache
def _hasher(block_size: int) -> PromptHasher:
    """One per process: it caches hashed prompts across the cells it runs."""
    return PromptHasher(block_size)


def _run_cell(cell: _Cell) -> tuple[float, tuple[Slice, Slice] | None]:
    """SLO attainment of one cell, and its class/tenant slices for seed 0. Deterministic for
    its inputs (simulated time), so cells may run in any order and any process."""
    base = _trace(cell.trace)
    trace = scale_trace(
        base,
        time_scale=cell.rate,
        jitter_s=default_jitter_s(cell.trace) / cell.rate,
        duration_s=cell.window / cell.rate,
        seed=cell.seed,
    )
    settings = SimSettings(workers=cell.workers, block_size=cell.block_size, seed=cell.seed)
    if cell.routing is not None:
        settings = dataclasses.replace(settings, routing=cell.routing)
    run = run_policy(
        cell.policy, trace, load_profile("h100"), settings, PromptHasher(cell.block_size)
    )
    slo = SLOTargets()
    return summarise(run, slo).slo_attainment, _slices(run, slo, trace) if cell.seed == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default="mooncake,azure-conv")
    ap.add_argument("--window", type=float, default=900.0, help="seconds of trace replayed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("out/sim_goodput"))
    ap.add_argument(
        "--rates",
        default="",
        help="Comma-separated rate multipliers of the trace (default: the trace's grid). "
        "Goodput counts from the lowest one given.",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="Simulations run in parallel processes (results are the same: simulated time).",
    )
    ap.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="Comma-separated policy labels to run (default: all of them).",
    )
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="Another policy, run interleaved with the others: a label and a RoutingProfile "
        'as JSON, e.g. \'ttft only={"scorers": [{"name": "prefill-time", "weight": 1}]}\'.',
    )
    args = ap.parse_args()
    labels = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in labels if p not in POLICIES]
    if unknown or OURS not in labels:
        ap.error(f"--policies: unknown {unknown} or missing {OURS!r}; known: {list(POLICIES)}")
    policies = {label: POLICIES[label] for label in labels}
    for item in args.extra:
        label, _, doc = item.partition("=")
        policies[label] = ("ours", RoutingProfile.model_validate_json(doc))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for name in args.traces.split(","):
        base = load_trace(name)
        workers, rates = CLUSTER[name], RATES[name]
        if args.rates:
            rates = tuple(sorted(float(r) for r in args.rates.split(",")))
        base_rps = sum(1 for r in base if r.arrival_s < args.window) / args.window
        print(
            f"\n## {name}: {workers} x H100, first {args.window:g} s of the trace "
            f"({base_rps:.2f} req/s at 1x), seeds {args.seeds}\n"
        )
        att: dict[str, dict[float, list[float]]] = {p: {r: [] for r in rates} for p in policies}
        sliced: dict[tuple[str, float], tuple[Slice, Slice]] = {}
        grid = [
            _Cell(name, seed, rate, label, policy, routing, workers, args.window, args.block_size)
            for seed in range(args.seeds)
            for rate in rates
            for label, (policy, routing) in policies.items()
        ]
        if args.jobs > 1:
            with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
                outcomes = pool.map(_run_cell, grid, chunksize=1)
        else:
            outcomes = [_run_cell(cell) for cell in grid]
        for cell, (attained, slices) in zip(grid, outcomes, strict=True):
            att[cell.label][cell.rate].append(attained)
            if slices is not None:
                sliced[cell.label, cell.rate] = slices
        print(
            "| policy | goodput req/s (median) | "
            + " | ".join(f"SLO met @{r:g}x" for r in rates)
            + " |"
        )
        print("|---|---:|" + "---:|" * len(rates))
        for label in policies:
            best = [
                goodput({r: att[label][r][seed] for r in rates}) * base_rps
                for seed in range(args.seeds)
            ]
            cells = " | ".join(f"{100 * statistics.median(att[label][r]):.1f} %" for r in rates)
            print(f"| {label} | {statistics.median(best):.2f} | {cells} |")
        at = goodput({r: att[OURS][r][0] for r in rates}) or rates[0]
        top = {label: sliced[label, at] for label in policies}
        print(
            f"\nAt {at:g}x ({at * base_rps:.2f} req/s, the default profile's goodput rate, "
            "seed 0): SLO attainment per class and tenant, Jain's index over tenants\n"
        )
        classes = sorted({c for cl, _ in top.values() for c in cl})
        tenants = sorted({t for _, tn in top.values() for t in tn})
        print("| policy | " + " | ".join(classes) + " | " + " | ".join(tenants) + " | Jain |")
        print("|---|" + "---:|" * (len(classes) + len(tenants) + 1))
        for label, (cl, tn) in top.items():
            row = [f"{100 * cl.get(c, math.nan):.1f} %" for c in classes]
            row += [f"{100 * tn.get(t, math.nan):.1f} %" for t in tenants]
            print(f"| {label} | " + " | ".join(row) + f" | {jain(list(tn.values())):.3f} |")
        _plot(name, rates, base_rps, att, args.out / f"goodput_{name}.png", workers)
    print(f"\n(simulated in {time.perf_counter() - t0:.0f} s; plots in {args.out}/)")
    return 0


def _plot(
    name: str,
    rates: tuple[float, ...],
    base_rps: float,
    att: dict[str, dict[float, list[float]]],
    path: Path,
    workers: int,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = np.array(rates) * base_rps
    for label, by_rate in att.items():
        ax.plot(x, [100 * statistics.median(by_rate[r]) for r in rates], marker="o", label=label)
    ax.axhline(100 * TARGET, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("requests meeting TTFT and TPOT SLO (%)")
    ax.set_title(f"{name}, {workers} x H100 (simulated)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
