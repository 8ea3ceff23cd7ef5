"""A missing kube-router skips the NetworkPolicy tests locally but fails them in CI.

Runs the real `ensure-netpol.sh --check` against an empty cache (it answers "not built"
without building anything), so the branch under test is the one a fresh machine takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.node_netpol import netpol_binary

MESSAGE = r"kube-router not built \(deploy/testbed/ensure-netpol.sh\)"


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_CACHE", str(tmp_path))


@pytest.mark.usefixtures("empty_cache")
def test_outside_ci_a_missing_kube_router_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=MESSAGE):
        netpol_binary()


@pytest.mark.usefixtures("empty_cache")
@pytest.mark.parametrize("value", ["false", "1", ""])
def test_only_ci_true_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=MESSAGE):
        netpol_binary()


@pytest.mark.usefixtures("empty_cache")
def test_in_ci_a_missing_kube_router_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=MESSAGE):
        netpol_binary()
