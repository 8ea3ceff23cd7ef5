"""The report of a live goodput run (`bench/live_goodput.py`): the per-replay record, the
medians over repeats, the markdown tables and the attainment-vs-rate plot.

Why apart from the runner: the runner owns processes, clocks and HTTP; everything here is a
pure function of the replays' figures (plus matplotlib for the PNG), so the tables can be
read, changed and checked without starting a stack.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mainsail.sim.goodput import OURS, TARGET, goodput, jain
from mainsail.sim.live import PromptScaling
from mainsail.sim.traces import TraceRequest


@dataclass
class Run:
    """One replay of one policy at one rate: fractions in [0, 1], times in seconds, the
    1-minute load average when it started."""

    attainment: float
    ttft_met: float
    tpot_met: float
    by_class: dict[str, float]
    by_tenant: dict[str, float]
    hit_rate: float
    ttft_p50: float
    ttft_p90: float
    errors: int
    load: float


@dataclass
class TraceResult:
    """Every replay of one trace: ``runs[policy, rate]`` in repeat order, ``rates`` the rate
    steps that ran (ascending), ``base_rps`` the slice's mean rate at 1x, ``ideal`` its prefix
    hit rate with one unbounded cache, ``keep_one_in`` the conversations kept."""

    name: str
    slice: list[TraceRequest]
    base_rps: float
    ideal: float
    rates: list[float]
    runs: dict[tuple[str, float], list[Run]]
    keep_one_in: int


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``xs`` (nearest rank below), NaN when empty."""
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else math.nan


def median(xs: Sequence[float]) -> float:
    """Median ignoring NaNs; NaN when nothing is left."""
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def report(result: TraceResult, labels: list[str], scaling: PromptScaling, repeats: int) -> str:
    """Markdown: the slice, goodput and attainment per rate, hit rates and TTFT p90, and per
    class and tenant (with Jain's index) at the default profile's goodput rate."""
    rates = result.rates
    runs = result.runs
    slice_ = result.slice
    out: list[str] = []
    prompts = [
        min(
            scaling.max_blocks * scaling.tokens_per_block,
            -(-r.input_tokens * scaling.tokens_per_block // 512),
        )
        for r in slice_
    ]
    outputs = statistics.mean(r.output_tokens for r in slice_)
    out.append(
        f"\n## {result.name}: {len(slice_)} requests (1 in {result.keep_one_in} conversations),"
        f" {result.base_rps:.3f} req/s at 1x; prompts {statistics.mean(prompts):.0f}"
        f" tokens mean, outputs {outputs:.1f} tokens mean;"
        f" ideal prefix hit rate {100 * result.ideal:.1f} %; medians of {repeats}\n"
    )
    if not rates:
        return "\n".join([*out, "(no rate step ran)"])
    n = min(len(runs[label, rates[0]]) for label in labels)
    out.append("| policy | goodput req/s | " + " | ".join(f"SLO met @{r:g}" for r in rates) + " |")
    out.append("|---|---:|" + "---:|" * len(rates))
    best_by: dict[str, float] = {}
    for label in labels:
        per_rep = [
            goodput({r: runs[label, r][k].attainment for r in rates if k < len(runs[label, r])})
            for k in range(n)
        ]
        best_by[label] = median(per_rep)
        cells = " | ".join(
            f"{100 * median([x.attainment for x in runs[label, r]]):.0f} %" for r in rates
        )
        out.append(f"| {label} | {best_by[label]:.2f} | {cells} |")
    out.append("\nPrefix hit rate (cached / prompt tokens) and TTFT p90 at each rate (medians):\n")
    out.append("| policy | " + " | ".join(f"hit @{r:g} | p90 ms @{r:g}" for r in rates) + " |")
    out.append("|---|" + "---:|---:|" * len(rates))
    for label in labels:
        cells = " | ".join(
            f"{100 * median([x.hit_rate for x in runs[label, r]]):.1f} % | "
            f"{1000 * median([x.ttft_p90 for x in runs[label, r]]):.0f}"
            for r in rates
        )
        out.append(f"| {label} | {cells} |")
    ours = best_by.get(OURS, 0.0)
    at = min(rates, key=lambda r: abs(r - ours)) if ours >= rates[0] else rates[0]
    why = "the default profile's goodput rate" if ours >= rates[0] else "the lowest rate"
    out.append(
        f"\nAt {at:g} req/s ({why}): SLO attainment per class and"
        " tenant (medians), Jain's index over the tenants' attainment\n"
    )
    classes = sorted({c for lb in labels for x in runs[lb, at] for c in x.by_class})
    tenants = sorted({t for lb in labels for x in runs[lb, at] for t in x.by_tenant})
    out.append(
        "| policy | TTFT met | TPOT met | " + " | ".join(classes + tenants) + " | Jain | errors |"
    )
    out.append("|---|" + "---:|" * (len(classes) + len(tenants) + 4))
    for label in labels:
        xs = runs[label, at]
        cl = [median([x.by_class.get(c, math.nan) for x in xs]) for c in classes]
        tn = [median([x.by_tenant.get(t, math.nan) for x in xs]) for t in tenants]
        j = median([jain(list(x.by_tenant.values())) for x in xs])
        split = [median([x.ttft_met for x in xs]), median([x.tpot_met for x in xs])]
        row = [f"{100 * v:.0f} %" for v in split + cl + tn]
        out.append(
            f"| {label} | " + " | ".join(row) + f" | {j:.3f} | {sum(x.errors for x in xs)} |"
        )
    loads = [x.load for xs in runs.values() for x in xs]
    out.append(
        f"\nLoad average (1 min) at the replays: min {min(loads):.1f}, median "
        f"{statistics.median(loads):.1f}, max {max(loads):.1f} ({os.cpu_count()} cores)"
    )
    return "\n".join(out)


@dataclass(frozen=True)
class Paired:
    """Policy A against policy B over the replays they ran back to back (same rate step, same
    repeat, so the same moment's machine load): how often A's attainment was above, below or
    equal to B's, the median difference in percentage points, and the median ratio of A's
    TTFT p90 to B's (below 1: A's tail is shorter)."""

    led: int
    trailed: int
    tied: int
    median_points: float
    median_p90_ratio: float


def paired(result: TraceResult, a: str, b: str, rates: Sequence[float]) -> Paired:
    """Compare ``a`` with ``b`` repeat by repeat at each of ``rates``; a repeat only one of
    them ran (a cut-short run) is left out."""
    diffs: list[float] = []
    ratios: list[float] = []
    for rate in rates:
        for x, y in zip(result.runs[a, rate], result.runs[b, rate], strict=False):
            diffs.append(100 * (x.attainment - y.attainment))
            if y.ttft_p90 > 0:
                ratios.append(x.ttft_p90 / y.ttft_p90)
    return Paired(
        led=sum(d > 0 for d in diffs),
        trailed=sum(d < 0 for d in diffs),
        tied=sum(d == 0 for d in diffs),
        median_points=median(diffs),
        median_p90_ratio=median(ratios),
    )


def paired_table(result: TraceResult, labels: list[str], baseline: str) -> str:
    """Markdown: every policy paired with ``baseline`` per rate and over all rates."""
    rates = result.rates
    others = [label for label in labels if label != baseline]
    if not rates or baseline not in labels or not others:
        return ""

    def cell(p: Paired) -> str:
        return (
            f"{p.led} / {p.trailed} / {p.tied}, {p.median_points:+.0f} pts,"
            f" p90 x{p.median_p90_ratio:.2f}"
        )

    out = [
        f"\nPaired with {baseline} (same rate step and repeat, back to back): led / trailed /"
        " tied in SLO attainment, median difference (points), median TTFT p90 ratio\n",
        "| policy | " + " | ".join(f"@{r:g}" for r in rates) + " | all rates |",
        "|---|" + "---:|" * (len(rates) + 1),
    ]
    for label in others:
        cells = [cell(paired(result, label, baseline, [r])) for r in rates]
        cells.append(cell(paired(result, label, baseline, rates)))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(result: TraceResult, labels: list[str], path: Path, title: str) -> None:
    """Attainment vs rate per policy (median, whiskers to the lowest and highest repeat) and
    the 90 % target, as a PNG at ``path``; nothing when no rate step ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = result.rates
    runs = result.runs
    if not rates:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label in labels:
        med = [100 * median([x.attainment for x in runs[label, r]]) for r in rates]
        lo = [100 * min(x.attainment for x in runs[label, r]) for r in rates]
        hi = [100 * max(x.attainment for x in runs[label, r]) for r in rates]
        yerr = [
            [m - a for m, a in zip(med, lo, strict=True)],
            [b - m for m, b in zip(med, hi, strict=True)],
        ]
        ax.errorbar(rates, med, yerr=yerr, marker="o", capsize=3, label=label)
    ax.axhline(100 * TARGET, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("requests meeting TTFT and TPOT SLO (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
