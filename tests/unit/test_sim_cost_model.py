"""Simulator cost model: the step formula, chunked prefill, shipped profiles and calibration."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mainsail.sim.calibrate import fit, main, nnls, profile_from_measurements
from mainsail.sim.cost import GPUProfile, attn_pairs, load_profile, load_profiles

pytestmark = pytest.mark.unit

P = GPUProfile(
    name="t",
    step_overhead_s=0.01,
    token_s=1e-4,
    attn_pair_s=1e-8,
    kv_read_s=1e-6,
    kv_capacity_tokens=10_000,
    max_num_seqs=8,
    max_batched_tokens=100,
)


def test_step_time_is_the_documented_linear_formula() -> None:
    got = P.step_time(prefill_tokens=50, attn_pairs=2000.0, decode_seqs=3, decode_context=900)
    assert got == pytest.approx(0.01 + 1e-4 * 53 + 1e-8 * 2000 + 1e-6 * 900)
    assert P.decode_step_time(4, 1000) == pytest.approx(0.01 + 4e-4 + 1e-3)


def test_decode_context_sums_or_pads_to_the_longest_sequence() -> None:
    assert P.decode_context([]) == 0
    assert P.decode_context([10, 30, 20]) == 60
    padded = P.model_copy(update={"decode_attention": "padded"})
    assert padded.decode_context([10, 30, 20]) == 90
    assert padded.decode_context([25, 25]) == P.decode_context([25, 25])  # equal: no padding


def test_prefill_time_chunks_by_the_token_budget_over_a_growing_context() -> None:
    expected = sum(
        P.step_time(n, attn_pairs(n, c), 0, 0) for n, c in ((100, 0), (100, 100), (50, 200))
    )
    assert P.prefill_time(250) == pytest.approx(expected)
    assert P.prefill_time(250, cached_tokens=1000) > P.prefill_time(250)
    assert P.prefill_time(0) == 0.0


def test_shipped_profiles_load_and_name_their_sources() -> None:
    profiles = load_profiles()
    assert {"h100", "a100"} <= set(profiles)
    for prof in profiles.values():
        assert prof.sources, prof.name
    h100, a100 = profiles["h100"], profiles["a100"]
    assert h100.prefill_time(8192) < a100.prefill_time(8192)
    assert h100.kv_capacity_blocks(16) == h100.kv_capacity_tokens // 16


def test_unknown_profile_and_bad_file_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="h100"):
        load_profile("tpu-v9")
    bad = tmp_path / "p.yaml"
    bad.write_text("- 1\n")
    with pytest.raises(ValueError, match="profiles"):
        load_profiles(bad)


def _steps(truth: GPUProfile, n: int = 40) -> list[dict[str, float]]:
    rng = random.Random(1)
    rows = []
    for _ in range(n):
        pre, seqs = rng.choice([(rng.randint(1, 100), 0), (0, rng.randint(1, 8))])
        pairs = attn_pairs(pre, rng.randint(0, 500)) if pre else 0.0
        ctx = seqs * rng.randint(10, 900)
        rows.append(
            {
                "prefill_tokens": pre,
                "attn_pairs": pairs,
                "decode_seqs": seqs,
                "decode_context": ctx,
                "seconds": truth.step_time(pre, pairs, seqs, ctx),
            }
        )
    return rows


def test_calibration_recovers_the_parameters_of_exact_measurements() -> None:
    params, quality = fit(_steps(P))
    assert params["step_overhead_s"] == pytest.approx(0.01, rel=1e-6)
    assert params["token_s"] == pytest.approx(1e-4, rel=1e-6)
    assert params["attn_pair_s"] == pytest.approx(1e-8, rel=1e-4)
    assert params["kv_read_s"] == pytest.approx(1e-6, rel=1e-6)
    assert quality["p90_rel_error"] < 1e-6


def test_nnls_never_returns_negative_coefficients() -> None:
    import numpy as np

    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]])
    b = np.array([3.0, 2.0, 1.0])  # unconstrained slope would be -1
    coef = nnls(a, b)
    assert (coef >= 0).all()
    assert coef[1] == 0.0


def test_calibrate_cli_writes_a_profile_the_simulator_loads(tmp_path: Path) -> None:
    doc = {"name": "bench-box", "kv_capacity_tokens": 4096, "max_num_seqs": 8, "steps": _steps(P)}
    src = tmp_path / "m.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "profiles.yaml"
    assert main([str(src), "--out", str(out)]) == 0
    prof = load_profile("bench-box", out)
    assert prof.token_s == pytest.approx(1e-4, rel=1e-6)
    assert prof.max_num_seqs == 8
    with pytest.raises(ValueError, match="at least"):
        profile_from_measurements({"kv_capacity_tokens": 1, "steps": _steps(P, 2)})
