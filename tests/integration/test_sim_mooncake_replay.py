"""A short Mooncake replay through the router's real scheduling profile and KV index.

Asserts the design claim the simulator exists to check: on real prefix-sharing traffic the
default `RoutingProfile` (via `build_profile` + `GlobalKVIndex`) reuses more prefix KV than
round-robin, and the command writes its report and plots.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mainsail.sim.cli import main
from mainsail.sim.cost import load_profile
from mainsail.sim.metrics import SLOTargets, summarise
from mainsail.sim.simulation import SimSettings, run_policy
from mainsail.sim.traces import load_trace, scale_trace

pytestmark = pytest.mark.integration


def test_ours_beats_round_robin_on_prefix_hit_rate() -> None:
    trace = scale_trace(load_trace("mooncake", limit=400), jitter_s=3.0, seed=1)
    settings = SimSettings(workers=8, block_size=64, seed=1)
    gpu = load_profile("h100")
    ours = summarise(run_policy("ours", trace, gpu, settings), SLOTargets())
    rr = summarise(run_policy("round-robin", trace, gpu, settings), SLOTargets())
    assert ours.unfinished == rr.unfinished == 0
    assert ours.hit_rate > rr.hit_rate + 0.02
    assert ours.served_max_over_mean < 2.0  # hits not bought by piling onto one worker


def test_cli_writes_report_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = "--trace azure-code --limit 150 --workers 3 --policy ours,least-loaded"
    code = main([*args.split(), "--out", str(out), "--sample-every", "5"])
    assert code == 0
    report = (out / "report.md").read_text()
    assert "| ours |" in report and "| least-loaded |" in report
    summary = json.loads((out / "summary.json").read_text())
    assert [p["policy"] for p in summary["policies"]] == ["ours", "least-loaded"]
    assert (out / "latency_cdf.png").stat().st_size > 10_000
    assert (out / "load_over_time.png").stat().st_size > 10_000
    assert main(["--policy", "nonsense", "--out", str(out)]) == 2
