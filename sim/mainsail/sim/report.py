"""The Markdown report of a simulation: one row per policy, the setup that produced it.

Why Markdown: the report is read in pull requests and pasted into docs/simulator.md as it is;
the same figures also go to ``summary.json`` for scripts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from mainsail.sim.metrics import SLOTargets, Summary


def _ms(x: float) -> str:
    return "—" if math.isnan(x) else f"{x * 1000:.0f}"


def _pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.1f} %"


def _trio(t: tuple[float, float, float]) -> str:
    return " / ".join(_ms(x) for x in t)


def render_markdown(
    summaries: Sequence[Summary], slo: SLOTargets, setup: Mapping[str, object]
) -> str:
    """The report as Markdown text."""
    lines = ["# Mainsail cluster simulation", ""]
    lines += [f"- **{k}**: {v}" for k, v in setup.items()]
    lines += [
        f"- **SLO**: TTFT <= {slo.ttft_s:g} s + {slo.ttft_per_1k_tokens_s:g} s per 1k prompt "
        f"tokens, TPOT <= {slo.tpot_s * 1000:g} ms",
        "",
        "Latencies in ms as p50 / p90 / p99. Attainment is over all requests (unfinished ones "
        "miss). Spread = requests served by the busiest worker / mean.",
        "",
        "| policy | TTFT | TPOT | E2E | queue | TTFT SLO | TPOT SLO | SLO | goodput req/s "
        "| prefix hit | spread | CV | max util | unfinished |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.policy} | {_trio(s.ttft)} | {_trio(s.tpot)} | {_trio(s.e2e)} | "
            f"{_trio(s.queue)} | {_pct(s.ttft_attainment)} | {_pct(s.tpot_attainment)} | "
            f"{_pct(s.slo_attainment)} | {s.goodput_rps:.2f} | {_pct(s.hit_rate)} | "
            f"{s.served_max_over_mean:.2f} | {s.served_cv:.2f} | {_pct(s.max_utilisation)} | "
            f"{s.unfinished} |"
        )
    lines += ["", "| policy | simulated in (s) | host time per routing decision (µs) |"]
    lines += ["|---|---:|---:|"]
    for s in summaries:
        dec = "—" if math.isnan(s.decide_us) else f"{s.decide_us:.0f}"
        lines.append(f"| {s.policy} | {s.wall_s:.1f} | {dec} |")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    summaries: Sequence[Summary],
    slo: SLOTargets,
    setup: Mapping[str, object],
) -> Path:
    """Writes ``report.md`` and ``summary.json`` into ``out_dir``; returns the report path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.md"
    path.write_text(render_markdown(summaries, slo, setup))
    payload = {
        "setup": {k: str(v) for k, v in setup.items()},
        "slo": dataclasses.asdict(slo),
        "policies": [dataclasses.asdict(s) for s in summaries],
    }
    (out_dir / "summary.json").write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")
    return path
