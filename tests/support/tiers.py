"""The order the test tiers run in (applied by tests/conftest.py).

Cheapest first gives the quickest failure, and it puts the session's heavy teardowns in the
right place: pytest finalizes session fixtures (the node cluster with its pods, the API server)
in the teardown of the *last* test, under that test's timeout. With directories in alphabetical
order the last test was a unit test, whose 15 s bound then covered stopping the whole node; CI
failed on exactly that under load. The cluster tier's own bound (45 min) fits its teardown.
"""

from __future__ import annotations

from pathlib import Path

TIER_ORDER = ("unit", "integration", "security", "e2e", "cluster")
TESTS_DIR = Path(__file__).resolve().parents[1]


def tier_rank(path: Path, tests_dir: Path = TESTS_DIR) -> int:
    """Position of the tier (the directory under tests/) a test file lives in; others last."""
    try:
        tier = path.resolve().relative_to(tests_dir).parts[0]
    except ValueError:
        return len(TIER_ORDER)
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER)
