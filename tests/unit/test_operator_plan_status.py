"""Planning (what to write), status aggregation and the per-deployment coalescer."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest

from mainsail.operator.coalescer import Coalescer
from mainsail.operator.desired import desired_children
from mainsail.operator.naming import Owner
from mainsail.operator.plan import contains, plan_changes
from mainsail.operator.settings import OperatorSettings
from mainsail.operator.status import Observation, deployment_status, merge_conditions
from mainsail.spec.crd import Condition
from mainsail.spec.deployment import ModelDeploymentSpec

pytestmark = pytest.mark.unit
OWNER = Owner(name="m", namespace="ns", uid="u1", generation=2)
SPEC = ModelDeploymentSpec.model_validate(
    {"model": {"name": "m", "generate": "llama"}, "pools": {"unified": {"replicas": 2}}}
)


def _children() -> list[dict[str, Any]]:
    return desired_children(OWNER, SPEC, OperatorSettings())


def _as_observed(obj: dict[str, Any]) -> dict[str, Any]:
    """What the server returns: the object plus fields it fills in."""
    out = copy.deepcopy(obj)
    out["metadata"] |= {"uid": "child-" + obj["metadata"]["name"], "resourceVersion": "7"}
    out["status"] = {"observedGeneration": 1}
    return out


def test_steady_state_plans_no_writes() -> None:
    desired = _children()
    plan = plan_changes(OWNER, desired, [_as_observed(o) for o in desired])
    assert plan.writes == 0 and len(plan.unchanged) == len(desired)


def test_missing_and_edited_children_are_put_back() -> None:
    desired = _children()
    observed = [_as_observed(o) for o in desired if o["kind"] != "Service"]
    config = next(o for o in observed if o["kind"] == "ConfigMap")
    config["data"]["config.json"] = "{}"
    plan = plan_changes(OWNER, desired, observed)
    assert [o["metadata"]["name"] for o in plan.create] == ["m-cache", "m-router", "m-router-peers"]
    assert [o["kind"] for o in plan.update] == ["ConfigMap"]


def test_only_controlled_children_are_deleted() -> None:
    ours = _as_observed(_children()[0]) | {"kind": "ConfigMap"}
    ours["metadata"]["name"] = "m-stale"
    theirs = copy.deepcopy(ours)
    theirs["metadata"]["name"] = "m-foreign"
    theirs["metadata"]["ownerReferences"] = [{"uid": "someone-else", "controller": True}]
    plan = plan_changes(OWNER, [], [ours, theirs])
    assert [o["metadata"]["name"] for o in plan.delete] == ["m-stale"]


def test_quantities_compare_by_value_and_extra_server_fields_are_ignored() -> None:
    desired = {"resources": {"requests": {"memory": "1024Mi", "cpu": "1"}}, "a": [{"b": 1}]}
    observed = {
        "resources": {"requests": {"memory": "1Gi", "cpu": "1000m"}},
        "a": [{"b": 1, "c": 2}],
    }
    assert contains(observed, desired)
    assert not contains(observed, {"a": [{"b": 2}]})
    assert not contains({"name": "1Gi"}, {"name": "1024Mi"})  # quantities only under resources


def _ready_pod(role: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"mainsail.dev/role": role}},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def _observation(
    ready_pods: int, router_ready: int, registered: dict[str, int] | None = None
) -> Observation:
    children = {(c["kind"], c["metadata"].get("name")): c for c in _children()}
    router = copy.deepcopy(children[("Deployment", "m-router")])
    router["metadata"]["generation"] = 1
    router["status"] = {"observedGeneration": 1, "readyReplicas": router_ready}
    cache = copy.deepcopy(children[("StatefulSet", "m-cache")])
    cache["status"] = {"readyReplicas": 1}
    return Observation(
        serving_pools={"unified": children[("ServingPool", "m-unified")]},
        pool_pods={"unified": [_ready_pod("unified")] * ready_pods},
        router=router,
        cache=cache,
        config_map=children[("ConfigMap", "m-config")],
        ray_cluster=children[("RayCluster", "m")],
        registered={"unified": ready_pods} if registered is None else registered,
    )


def _conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_status_reports_pools_router_cache_and_kv() -> None:
    status = deployment_status(OWNER, SPEC, _observation(1, 1), None, "T0")
    assert status["ready"] == "0/1" and status["observedGeneration"] == 2
    assert status["pools"]["unified"] == {
        "servingPool": "m-unified",
        "replicas": 2,
        "readyReplicas": 1,
        "registeredWorkers": 1,
    }
    assert status["endpoint"] == "http://m-router.ns.svc:8000"
    conditions = _conditions(status)
    assert conditions["Ready"] == ("False", "PoolsNotReady")
    assert conditions["RouterReady"] == ("True", "RouterAvailable")
    assert conditions["CacheReady"] == ("True", "CacheAvailable")
    assert conditions["KVConfigConsistent"] == ("True", "FingerprintsMatch")
    ready = deployment_status(OWNER, SPEC, _observation(2, 1), status, "T1")
    assert _conditions(ready)["Ready"] == ("True", "DeploymentReady") and ready["ready"] == "1/1"


def test_ready_pods_are_not_enough_workers_must_register() -> None:
    """Pods Ready but the workers not registered (model loading): not Ready, and why."""
    status = deployment_status(OWNER, SPEC, _observation(2, 1, {"unified": 1}), None, "T0")
    assert status["ready"] == "0/1"
    assert _conditions(status)["Ready"] == ("False", "PoolsNotReady")
    message = next(c["message"] for c in status["conditions"] if c["type"] == "PoolsReady")
    assert "unified 1/2 registered (2 pods ready)" in message


def test_an_unreachable_router_is_not_ready() -> None:
    obs = _observation(2, 1)
    obs = Observation(**{**obs.__dict__, "registered": None, "router_error": "GET x: refused"})
    status = deployment_status(OWNER, SPEC, obs, None, "T0")
    conditions = _conditions(status)
    assert conditions["Ready"] == ("False", "RouterUnreachable")
    assert conditions["RouterReady"] == ("False", "RouterUnreachable")
    assert "registeredWorkers" not in status["pools"]["unified"]
    message = next(c["message"] for c in status["conditions"] if c["type"] == "RouterReady")
    assert "GET x: refused" in message


def test_registered_workers_come_from_the_router_metrics() -> None:
    from mainsail.operator.router_probe import RouterUnreachable, registered_workers

    text = (
        "# TYPE mainsail_router_queued_requests gauge\nmainsail_router_queued_requests 3.0\n"
        "# TYPE mainsail_router_workers gauge\n"
        'mainsail_router_workers{role="prefill"} 2.0\nmainsail_router_workers{role="decode"} 1.0\n'
    )
    assert registered_workers(text) == {"prefill": 2, "decode": 1}
    idle = "# TYPE mainsail_router_queued_requests gauge\nmainsail_router_queued_requests 0.0\n"
    assert registered_workers(idle) == {}
    with pytest.raises(RouterUnreachable, match="not a Mainsail router"):
        registered_workers("# TYPE x gauge\nx 1.0\n")


def test_kv_mismatch_is_loud() -> None:
    obs = _observation(2, 1)
    assert obs.router is not None
    router = copy.deepcopy(dict(obs.router))
    router["spec"]["template"]["spec"]["containers"][0]["env"][2]["value"] = "other/b32/s0"
    obs = Observation(**{**obs.__dict__, "router": router})
    conditions = _conditions(deployment_status(OWNER, SPEC, obs, None, "T0"))
    assert conditions["KVConfigConsistent"] == ("False", "FingerprintMismatch")
    assert conditions["Ready"] == ("False", "FingerprintMismatch")


def test_transition_time_moves_only_when_status_changes() -> None:
    before = [{"type": "Ready", "status": "False", "lastTransitionTime": "T0"}]
    same = Condition(type="Ready", status="False", reason="X", last_transition_time="", message="")
    flipped = same.model_copy(update={"status": "True"})
    assert merge_conditions(before, [same], "T1")[0].last_transition_time == "T0"
    assert merge_conditions(before, [flipped], "T1")[0].last_transition_time == "T1"


async def test_coalescer_runs_one_pass_at_a_time_and_folds_requests() -> None:
    runs: list[str] = []
    gate = asyncio.Event()

    async def run(key: str) -> None:
        runs.append(key)
        await gate.wait()

    coalescer: Coalescer[str] = Coalescer(run)
    first = asyncio.create_task(coalescer.request("a"))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(coalescer.request("a")) for _ in range(5)]
    other = asyncio.create_task(coalescer.request("b"))
    await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, *waiters, other), timeout=1)
    assert sorted(runs) == ["a", "a", "b"]  # five requests during a pass -> one more pass
    assert coalescer.running() == 0


async def test_coalescer_waiters_see_the_error() -> None:
    gate = asyncio.Event()

    async def run(key: str) -> None:
        await gate.wait()
        raise RuntimeError("boom")

    coalescer: Coalescer[str] = Coalescer(run)
    first = asyncio.create_task(coalescer.request("a"))
    await asyncio.sleep(0)
    second = asyncio.create_task(coalescer.request("a"))
    await asyncio.sleep(0)  # the second joins the pass in flight
    gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 1)
    assert all(isinstance(r, RuntimeError) for r in results)
