"""A worker pod has room for its warm spare rank: the operator's Ray ``num-cpus`` covers the
ranks, the ranks joining a resize and the spares, at every degree and during every resize.

Why a test of its own: the three numbers come from three components (the spec's
``EngineSettings.ranks``, the operator's worker group, the runner's
`plan.warm_spares_wanted`); if they drifted apart, a spare would take the last bundle and a
scale-up's joining rank would wait for room until its placement timed out.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from mainsail.operator.desired import desired_children
from mainsail.operator.naming import Owner
from mainsail.operator.settings import OperatorSettings
from mainsail.spec.deployment import load_model_deployment
from mainsail.workers.parallel.plan import warm_spares_wanted

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "mixtral-moe.yaml"
OWNER = Owner(name="moe", namespace="ns", uid="uid-1", generation=1)
RANK_CPUS = 1  # EngineConfig.rank_resources' default on a cluster: one CPU per rank bundle


@functools.cache
def _pod_cpus(tp: int, low: int, high: int) -> int:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["spec"]["engine"]["tensorParallel"] = tp
    body["spec"]["engine"]["expertParallel"] = {"min": low, "max": high}
    spec = load_model_deployment(body).spec
    children = desired_children(OWNER, spec, OperatorSettings())
    (cluster,) = [c for c in children if c["kind"] == "RayCluster"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    return int(group["rayStartParams"]["num-cpus"])


@settings(deadline=None)  # the first examples render the deployment (then cached)
@given(
    tp=st.sampled_from([1, 2]),
    degrees=st.lists(st.integers(1, 4), min_size=4, max_size=4),
    up=st.booleans(),
    warm=st.integers(0, 8),
)
def test_ranks_joining_ranks_and_spares_fit_the_pod(
    tp: int, degrees: list[int], up: bool, warm: int
) -> None:
    low, smaller, larger, high = sorted(d * tp for d in degrees)
    current, target = (smaller, larger) if up else (larger, smaller)
    cpus = _pod_cpus(tp, low, high)
    # Serving at ``current``, moving to ``target``: ranks in use are the larger of the two
    # (joining ranks are started before the switch, leaving ones released after it).
    in_use = max(tp, current, target)
    spares = warm_spares_wanted(warm, high, tp, [current, target])
    assert (in_use + spares) * RANK_CPUS <= cpus, (tp, low, high, current, target, warm, cpus)
    # and once the resize is done
    settled = warm_spares_wanted(warm, high, tp, [target])
    assert (max(tp, target) + settled) * RANK_CPUS <= cpus


def test_a_spare_is_wanted_while_max_exceeds_the_degree() -> None:
    assert warm_spares_wanted(1, 4, 1, [1]) == 1
    assert warm_spares_wanted(1, 4, 1, [1, 4]) == 0  # moving to max: none
    assert warm_spares_wanted(3, 4, 2, [2]) == 2
    assert warm_spares_wanted(0, 4, 1, [1]) == 0
    assert warm_spares_wanted(1, None, 1, [1]) == 0  # not elastic
