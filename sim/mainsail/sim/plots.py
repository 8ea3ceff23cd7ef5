"""PNG plots of a simulation: latency CDFs and per-worker load over time.

Why these two: CDFs show the tail a percentile table hides, and load over time shows whether a
policy's hit rate was bought by piling requests on a few workers. matplotlib is imported lazily
(headless ``Agg`` backend) so the simulator core never needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mainsail.sim.simulation import RunResult


def plot_latency_cdfs(runs: Sequence[RunResult], path: Path) -> Path:
    """TTFT, TPOT and E2E CDFs, one line per policy, log-scaled time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    metrics = (("TTFT (s)", "ttft"), ("TPOT (s)", "tpot"), ("end-to-end (s)", "e2e"))
    for ax, (label, attr) in zip(axes, metrics, strict=True):
        for run in runs:
            done = [r for r in run.requests if not math.isnan(r.finished)]
            if attr == "tpot":
                done = [r for r in done if r.output_tokens > 1]
            values = np.sort(np.array([getattr(r, attr) for r in done]))
            if values.size == 0:
                continue
            ys = np.arange(1, values.size + 1) / values.size
            ax.plot(np.maximum(values, 1e-4), ys, label=run.policy)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_load_over_time(runs: Sequence[RunResult], path: Path) -> Path:
    """Per policy: the busiest worker's load and the mean load (requests at the worker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 2.4 * len(runs) + 0.5), sharex=True)
    axes_list = list(np.atleast_1d(axes))
    for ax, run in zip(axes_list, runs, strict=True):
        if run.load_samples:
            loads = np.array(run.load_samples, dtype=float)
            t = np.array(run.sample_times) / 60.0
            ax.fill_between(t, loads.min(axis=1), loads.max(axis=1), alpha=0.25, label="min-max")
            ax.plot(t, loads.mean(axis=1), label="mean")
            ax.plot(t, loads.max(axis=1), linewidth=0.8, label="busiest")
        ax.set_title(run.policy, fontsize=10, loc="left")
        ax.set_ylabel("requests")
        ax.grid(True, alpha=0.3)
    axes_list[0].legend(loc="upper right", fontsize=8)
    axes_list[-1].set_xlabel("time (min)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
