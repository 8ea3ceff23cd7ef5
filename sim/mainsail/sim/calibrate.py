"""Fit a `GPUProfile` from measured engine steps: ``python -m mainsail.sim.calibrate``.

Why from a file: the simulator must not import the engine (import-linter contract), so a bench
script (``bench/sim_calibrate_engine.py`` for our engine; any script for another engine) times
real steps and writes them as JSON; this module fits the cost model to them. Input::

    {"name": "cpu-tiny", "description": "...", "sources": ["..."],
     "kv_capacity_tokens": 65536, "max_num_seqs": 64, "max_batched_tokens": 512,
     "steps": [{"prefill_tokens": 256, "attn_pairs": 32768.0,
                "decode_seqs": 0, "decode_context": 0, "seconds": 0.0123}, ...]}

``attn_pairs`` is ``sum(n * (c + n / 2))`` over the step's prefill chunks (n new tokens after c
cached ones). The fit is non-negative least squares on relative error (rows weighted by
1 / seconds, so short decode steps count as much as long prefills) of the formula in
`mainsail.sim.cost`. The output is a YAML ``profiles:`` mapping that ``--gpu-profiles`` reads,
and the fit's median and p90 relative error are printed.
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

_PARAMS = ("step_overhead_s", "token_s", "attn_pair_s", "kv_read_s")


def design_matrix(steps: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Columns in `_PARAMS` order, and the measured seconds."""
    rows, y = [], []
    for i, s in enumerate(steps):
        try:
            tokens = float(s["prefill_tokens"]) + float(s["decode_seqs"])
            rows.append([1.0, tokens, float(s["attn_pairs"]), float(s["decode_context"])])
            y.append(float(s["seconds"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"step {i}: {exc!r}") from exc
    if len(rows) < len(_PARAMS):
        raise ValueError(f"need at least {len(_PARAMS)} measured steps, got {len(rows)}")
    return np.array(rows), np.array(y)


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (drop negative columns and refit)."""
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], b, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            return coef
        active = [c for c, v in zip(active, sol, strict=True) if v >= 0]
    return coef


def fit(steps: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Fitted parameters and fit quality (median and p90 relative error)."""
    a, y = design_matrix(steps)
    if (y <= 0).any():
        raise ValueError("every step's seconds must be > 0")
    w = 1.0 / y
    coef = nnls(a * w[:, None], y * w)
    rel = np.abs(a @ coef - y) / y
    params = dict(zip(_PARAMS, (float(c) for c in coef), strict=True))
    quality = {
        "median_rel_error": float(np.median(rel)),
        "p90_rel_error": float(np.percentile(rel, 90)),
    }
    return params, quality


def profile_from_measurements(doc: dict[str, Any]) -> tuple[GPUProfile, dict[str, float]]:
    """A validated profile from a measurements document, and its fit quality."""
    params, quality = fit(list(doc.get("steps", [])))
    profile = GPUProfile(
        name=str(doc.get("name", "calibrated")),
        description=str(doc.get("description", "fitted by mainsail.sim.calibrate")),
        sources=[*map(str, doc.get("sources", [])), "fitted by mainsail.sim.calibrate"],
        kv_capacity_tokens=int(doc["kv_capacity_tokens"]),
        max_num_seqs=int(doc.get("max_num_seqs", 256)),
        max_batched_tokens=int(doc.get("max_batched_tokens", 8192)),
        **params,
    )
    return profile, quality


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m mainsail.sim.calibrate MEASUREMENTS.json --out PROFILES.yaml``."""
    p = argparse.ArgumentParser(prog="python -m mainsail.sim.calibrate", description=__doc__)
    p.add_argument("measurements", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write a profiles YAML here")
    args = p.parse_args(argv)
    try:
        doc = json.loads(args.measurements.read_text())
        profile, quality = profile_from_measurements(doc)
    except (OSError, ValueError, KeyError) as exc:
        print(f"calibrate: {exc}", file=sys.stderr)
        return 2
    body = profile.model_dump(exclude={"name"})
    text = yaml.safe_dump({"profiles": {profile.name: body}}, sort_keys=False)
    print(text, end="")
    print(
        f"# fit over {len(doc['steps'])} steps: median relative error "
        f"{100 * quality['median_rel_error']:.1f} %, p90 {100 * quality['p90_rel_error']:.1f} %"
    )
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
