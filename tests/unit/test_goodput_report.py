"""The live goodput run's report (`bench/goodput_report.py`): the paired comparison counts
leads, losses and ties repeat by repeat and skips a repeat only one policy ran; the tables
name every policy and rate. Pure functions over hand-made replays (the plot, which needs
matplotlib's slow import, is left to the benchmark itself).

The module is a benchmark script's sibling, not a package: it is loaded from its path (mypy
sees it through `mypy_path`, which lists bench/).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mainsail.sim.goodput import OURS
from mainsail.sim.live import PromptScaling
from mainsail.sim.traces import TraceRequest

if TYPE_CHECKING:
    import goodput_report as gr
else:
    _path = Path(__file__).resolve().parents[2] / "bench" / "goodput_report.py"
    _spec = importlib.util.spec_from_file_location("goodput_report", _path)
    gr = importlib.util.module_from_spec(_spec)
    sys.modules["goodput_report"] = gr  # dataclasses look their module up while building
    _spec.loader.exec_module(gr)

pytestmark = pytest.mark.unit


def run(attainment: float, p90: float = 0.5) -> gr.Run:
    return gr.Run(
        attainment=attainment,
        ttft_met=attainment,
        tpot_met=1.0,
        by_class={"batch": attainment},
        by_tenant={"t0": attainment, "t1": 1.0},
        hit_rate=0.2,
        ttft_p50=p90 / 2,
        ttft_p90=p90,
        errors=0,
        load=3.0,
    )


def result(runs: dict[tuple[str, float], list[gr.Run]], rates: list[float]) -> gr.TraceResult:
    slice_ = [TraceRequest(float(i), 1024, 64, (i, i + 1)) for i in range(4)]
    return gr.TraceResult("mooncake", slice_, 1.0, 0.0, rates, runs, 16)


def test_paired_counts_leads_losses_and_ties_per_repeat() -> None:
    runs = {
        (OURS, 2.0): [run(1.0, 0.4), run(0.9, 0.6), run(0.8, 1.0)],
        ("least-work", 2.0): [run(0.9, 0.8), run(0.9, 0.6), run(1.0, 0.5)],
        (OURS, 4.0): [run(0.5, 1.0)],
        ("least-work", 4.0): [run(0.25, 2.0), run(0.0, 3.0)],  # a repeat OURS never ran
    }
    res = result(runs, [2.0, 4.0])
    at2 = gr.paired(res, OURS, "least-work", [2.0])
    assert (at2.led, at2.trailed, at2.tied) == (1, 1, 1)
    assert at2.median_points == pytest.approx(0.0)
    assert at2.median_p90_ratio == pytest.approx(1.0)  # 0.5, 1.0, 2.0
    both = gr.paired(res, OURS, "least-work", [2.0, 4.0])
    assert (both.led, both.trailed, both.tied) == (2, 1, 1)
    assert both.median_points == pytest.approx(5.0)  # 10, 0, -20, 25
    assert both.median_p90_ratio == pytest.approx(0.75)  # 0.5, 0.5, 1.0, 2.0


def test_tables_name_every_policy_and_rate() -> None:
    labels = [OURS, "least-work", "round-robin"]
    rates = [2.0, 4.0]
    runs = {(lb, r): [run(0.95 if r == 2.0 else 0.5)] * 3 for lb in labels for r in rates}
    res = result(runs, rates)
    text = gr.report(res, labels, PromptScaling(64, 24, 500, 3, 32), repeats=3)
    assert "| ours (default) | 2.00 | 95 % | 50 % |" in text
    assert "Jain" in text and "t0" in text and "batch" in text
    table = gr.paired_table(res, labels, "least-work")
    assert "| round-robin | 0 / 0 / 3, +0 pts, p90 x1.00 |" in table
    assert "least-work |" not in table.replace("Paired with least-work", "")
    assert gr.paired_table(res, labels, "kv-only") == ""  # a baseline that did not run


def test_median_skips_nan_and_percentile_of_nothing_is_nan() -> None:
    assert gr.median([math.nan, 1.0, 3.0]) == 2.0
    assert math.isnan(gr.median([math.nan]))
    assert math.isnan(gr.percentile([], 0.9))
    assert gr.percentile([1.0, 2.0, 3.0, 4.0], 0.9) == 4.0
