"""The tiers run cheapest first and the cluster tier last (see tests/support/tiers.py for why:
the last test's timeout also bounds the session's teardown of the node)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.tiers import TESTS_DIR, TIER_ORDER, tier_rank

pytestmark = pytest.mark.unit


def test_every_tier_directory_has_a_place_and_cluster_is_last() -> None:
    dirs = {p.name for p in TESTS_DIR.iterdir() if p.is_dir() and p.name not in ("support",)}
    dirs -= {"__pycache__"}
    assert dirs == set(TIER_ORDER)
    assert TIER_ORDER[0] == "unit" and TIER_ORDER[-1] == "cluster"


def test_rank_sorts_files_by_tier_and_keeps_order_within_one() -> None:
    files = [
        TESTS_DIR / "cluster/test_a.py",
        TESTS_DIR / "unit/test_z.py",
        TESTS_DIR / "e2e/test_b.py",
        TESTS_DIR / "unit/test_a.py",
        TESTS_DIR / "integration/test_c.py",
        Path("/elsewhere/test_x.py"),
    ]
    ordered = sorted(files, key=tier_rank)
    assert [p.parent.name for p in ordered] == [
        "unit",
        "unit",
        "integration",
        "e2e",
        "cluster",
        "elsewhere",
    ]
    assert ordered[0].name == "test_z.py"  # stable: pytest's order within a tier stays


def test_this_session_ran_in_tier_order(request: pytest.FixtureRequest) -> None:
    ranks = [tier_rank(item.path) for item in request.session.items]
    assert ranks == sorted(ranks)
