"""The unit tier's own rules: every test gets a short timeout (unless it sets one).

Why: unit tests run on injected clocks and in-process fakes, so the slowest takes seconds; a
unit test that hangs should fail in `UNIT_TIMEOUT_S`, not after the suite-wide 300 s meant for
tiers that start real servers. The bound covers fixture setup too, so it leaves room for the
one-time costs a first test pays: generating the tiny checkpoint on a clean clone (~4 s with the
torch import) and torch's first LoRA forward pass (2.4 s idle, 7.2 s with two unit tiers and
mypy sharing 2 busy cores) - the bound is about twice the worst seen.
A test that waits for a router timeout advances a `ManualClock` instead of sleeping it out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT_TIMEOUT_S = 15
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))
