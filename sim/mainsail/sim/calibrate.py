"""Fit a `GPUProfile` from measured engine steps: ``python -m mainsail.sim.calibrate``.

Why from a file: the simulator must not import the engine (import-linter contract), so a bench
script (``bench/sim_calibrate_engine.py`` for our engine; any script for another engine) times
real steps and writes them as JSON; this module fits the cost model to them. Input::

    {"name": "cpu-tiny", "description": "...", "sources": ["..."],
     "kv_capacity_tokens": 65536, "max_num_seqs": 64, "max_batched_tokens": 512,
     "steps": [{"prefill_tokens": 256, "attn_pairs": 32768.0,
                "decode_seqs": 0, "decode_context": 0, "seconds": 0.0123}, ...]}

``attn_pairs`` is ``sum(n * (c + n / 2))`` over the step's prefill chunks (n new tokens after c
cached ones); ``prefill_chunks`` (how many prompts the step prefills a chunk of, default 1 when
``prefill_tokens`` > 0) and ``after_idle`` are optional. Steps with several chunks and steps
mixing decodes with a prefill are what separate the per-sequence terms from the rest. The fit
is exact non-negative least squares of the formula in `mainsail.spec.step_cost`, on absolute
seconds by default (see `fit` for why). The output is a YAML ``profiles:`` mapping that
``--gpu-profiles`` reads; the fit's errors are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mainsail.sim.cost import GPUProfile

_PARAMS = (
    "step_overhead_s",
    "token_s",
    "attn_pair_s",
    "kv_read_s",
    "idle_wake_s",
    "seq_s",
    "decode_batch_s",
)


def design_matrix(steps: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Columns in `_PARAMS` order, and the measured seconds. A step's ``prefill_chunks``
    (prompts it prefills a chunk of) defaults to one when it has prefill tokens."""
    rows, y = [], []
    for i, s in enumerate(steps):
        try:
            prefill = float(s["prefill_tokens"])
            seqs = float(s["decode_seqs"])
            chunks = float(s.get("prefill_chunks", 1 if prefill > 0 else 0))
            idle = float(s.get("after_idle", 0))
            rows.append(
                [
                    1.0,
                    prefill + seqs,
                    float(s["attn_pairs"]),
                    float(s["decode_context"]),
                    idle,
                    chunks + seqs,
                    1.0 if seqs > 0 else 0.0,
                ]
            )
            y.append(float(s["seconds"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"step {i}: {exc!r}") from exc
    if len(rows) < len(_PARAMS):
        raise ValueError(f"need at least {len(_PARAMS)} measured steps, got {len(rows)}")
    return np.array(rows), np.array(y)


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact least squares with every coefficient >= 0, by trying every support set.

    The model has seven parameters, so the 127 non-empty subsets of columns are cheap; the
    answer is the best unconstrained fit among subsets whose solution is non-negative.
    """
    n = a.shape[1]
    best, best_err = np.zeros(n), float(np.sum(b * b))
    for mask in range(1, 1 << n):
        cols = [c for c in range(n) if mask >> c & 1]
        sol, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
        if (sol < 0).any():
            continue
        coef = np.zeros(n)
        coef[cols] = sol
        err = float(np.sum((a @ coef - b) ** 2))
        if err < best_err:
            best, best_err = coef, err
    return best


def fit(
    steps: list[dict[str, Any]], weighting: str = "absolute"
) -> tuple[dict[str, float], dict[str, float]]:
    """Fitted parameters and fit quality (median and p90 relative error).

    ``absolute`` (default) minimises squared seconds, so total busy time, and with it
    throughput and queueing, is matched; ``relative`` minimises squared relative error, which
    fits short steps better but under-predicts when measurement noise is one-sided (a shared
    CPU only ever adds time).
    """
    a, y = design_matrix(steps)
    if (y <= 0).any():
        raise ValueError("every step's seconds must be > 0")
    if weighting not in ("absolute", "relative"):
        raise ValueError(f"weighting must be 'absolute' or 'relative', got {weighting!r}")
    w = 1.0 / y if weighting == "relative" else np.ones_like(y)
    coef = nnls(a * w[:, None], y * w)
    rel = np.abs(a @ coef - y) / y
    params = dict(zip(_PARAMS, (float(c) for c in coef), strict=True))
    quality = {
        "median_rel_error": float(np.median(rel)),
        "p90_rel_error": float(np.percentile(rel, 90)),
        "total_time_ratio": float((a @ coef).sum() / y.sum()),
    }
    return params, quality


def profile_from_measurements(
    doc: dict[str, Any], weighting: str = "absolute"
) -> tuple[GPUProfile, dict[str, float]]:
    """A validated profile from a measurements document, and its fit quality."""
    params, quality = fit(list(doc.get("steps", [])), weighting)
    profile = GPUProfile(
        name=str(doc.get("name", "calibrated")),
        description=str(doc.get("description", "fitted by mainsail.sim.calibrate")),
        sources=[*map(str, doc.get("sources", [])), "fitted by mainsail.sim.calibrate"],
        kv_capacity_tokens=int(doc["kv_capacity_tokens"]),
        max_num_seqs=int(doc.get("max_num_seqs", 256)),
        max_batched_tokens=int(doc.get("max_batched_tokens", 8192)),
        decode_attention=doc.get("decode_attention", "sum"),
        **params,
    )
    return profile, quality


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m mainsail.sim.calibrate MEASUREMENTS.json --out PROFILES.yaml``."""
    p = argparse.ArgumentParser(prog="python -m mainsail.sim.calibrate", description=__doc__)
    p.add_argument("measurements", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write a profiles YAML here")
    p.add_argument("--weighting", choices=["absolute", "relative"], default="absolute")
    args = p.parse_args(argv)
    try:
        doc = json.loads(args.measurements.read_text())
        profile, quality = profile_from_measurements(doc, args.weighting)
    except (OSError, ValueError, KeyError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 2
    body = profile.model_dump(exclude={"name"})
    text = yaml.safe_dump({"profiles": {profile.name: body}}, sort_keys=False)
    print(text, end="")
    print(
        f"# fit over {len(doc['steps'])} steps: median relative error "
        f"{100 * quality['median_rel_error']:.1f} %, p90 {100 * quality['p90_rel_error']:.1f} %, "
        f"predicted / measured total time {quality['total_time_ratio']:.2f}"
    )
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
