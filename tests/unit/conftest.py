"""The unit tier's own rules: every test gets a short timeout (unless it sets one), and the
tier's one-time costs are paid before the first test, outside any timeout.

Why the timeout: unit tests run on injected clocks and in-process fakes, so the slowest takes
seconds; a unit test that hangs should fail in `UNIT_TIMEOUT_S`, not after the suite-wide 300 s
meant for tiers that start real servers. A test that waits for a router timeout advances a
`ManualClock` instead of sleeping it out.

Why the warm-up: pytest-timeout's bound covers fixture setup, so whichever test came first used
to pay costs that belong to the session, not to it: importing torch (the session fixture
`tiny_model_dir` imports the checkpoint generator; 15-18 s at load average 10-13 on 2 cores),
generating the tiny checkpoint on a clean clone, the first `torch.testing.assert_close`, which
imports sympy and torch.distributed (~500 modules, 14 s at the same load), and Hypothesis's
unicode tables for `st.text()` on a clean clone (it encodes all 1.1 million code points once
and caches the result under .hypothesis/: 22 s at load 35). Under load average 20-30 each of
those alone went past the bound, in whichever test happened to come first. So
`pytest_collection_finish` pays them once, and only when a collected unit test needs them: the
checkpoint when one uses `tiny_model_dir` (the fixture then only re-checks the marker), the
assert_close imports when torch is loaded anyway (a unit test module imports it), the unicode
tables when a collected unit test is a Hypothesis test. The bound then applies to test bodies
and their own fixtures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

UNIT_TIMEOUT_S = 15
_HERE = Path(__file__).parent


def _unit_items(items: list[pytest.Item]) -> list[pytest.Item]:
    return [item for item in items if item.path.is_relative_to(_HERE)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in _unit_items(items):
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Warm up what the collected unit tests share (see the module docstring)."""
    units = _unit_items(session.items)
    if not units or session.config.option.collectonly:
        return
    if any("tiny_model_dir" in getattr(item, "fixturenames", ()) for item in units):
        from mainsail.workers.checkpoint import ensure_checkpoint

        ensure_checkpoint("llama")  # the same call as the `tiny_model_dir` fixture
    if "torch" in sys.modules:
        import torch

        probe = torch.zeros(1)
        torch.testing.assert_close(probe, probe)
    if any(getattr(getattr(item, "obj", None), "is_hypothesis_test", False) for item in units):
        from hypothesis import strategies as st

        st.text().validate()  # builds (or reads back) the unicode tables text() draws from
