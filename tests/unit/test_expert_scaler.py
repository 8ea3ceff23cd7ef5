"""The expert-parallel autoscaler's fast tier: the router -> operator signal contract (a real
router registry rendered and parsed) and passes over an in-memory API with a scripted router
(the router's admin endpoint: test_router_expert_admin.py). The whole loop with a
real API server, operator, router and sharded worker: tests/integration/
test_operator_expert_parallel.py."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from support.expert_router import ScriptedRouter, reading

from mainsail.operator.expert_parallel_policy import ExpertSignals
from mainsail.operator.expert_scaler import ExpertScaler
from mainsail.operator.expert_signals import parse_expert_signals
from mainsail.operator.fake_kube import InMemoryKubeApi
from mainsail.operator.router_signals import SignalsUnavailable
from mainsail.operator.settings import OperatorSettings
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.pool_load import PoolLoadCollector
from mainsail.router.fleet.registry import WorkerEntry
from mainsail.router.metrics import RouterMetrics
from mainsail.spec.worker_auth import secret_name

pytestmark = pytest.mark.unit


def _entry(worker: str, role: str, ep: int, target: int, load: list[float]) -> WorkerEntry:
    info = pb.WorkerInfo(worker_id=worker, address=f"{worker}:1", role=role, model="m")
    snap = pb.LoadSnapshot(
        running=3, waiting=1, expert_parallel=ep, expert_parallel_target=target, expert_load=load
    )
    return WorkerEntry(info=info, last_seen=0.0, load=snap)


def test_router_exposition_carries_expert_figures() -> None:
    entries = [
        _entry("a", "unified", 2, 2, [10.0, 20.0, 30.0, 40.0]),
        _entry("b", "unified", 1, 2, [1.0, 1.0, 1.0, 1.0]),  # switching 1 -> 2
        _entry("c", "decode", 0, 0, []),  # not a sharded MoE worker: no expert figures
    ]
    metrics = RouterMetrics()
    metrics.registry.register(PoolLoadCollector(lambda: entries))
    metrics.queued.set(2)
    metrics.workers.labels("unified").set(2)
    signals = parse_expert_signals(metrics.render().decode())
    assert set(signals) == {"unified"}
    assert signals["unified"] == ExpertSignals(
        current=1, workers=2, running=6, waiting=2 + 2, expert_load=(11.0, 21.0, 31.0, 41.0),
        switching=True,
    )  # fmt: skip


def test_non_router_text_is_unavailable() -> None:
    with pytest.raises(SignalsUnavailable):
        parse_expert_signals("# TYPE x gauge\nx 1\n")


# ---------------------------------------------------------------- passes


def _deployment(api: InMemoryKubeApi, *, token: bool = True, routers: int = 1) -> dict[str, Any]:
    body = {
        "apiVersion": "mainsail.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "moe", "namespace": "ns"},
        "spec": {
            "model": {"name": "moe", "generate": "mixtral"},
            "engine": {"expertParallel": {"min": 1, "max": 4}},
            "router": {"replicas": routers},
            "pools": {"unified": {"replicas": 2}},
        },
    }
    uid = api.put(body)["metadata"]["uid"]  # the API server's, not ours
    if token:
        api.put({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": secret_name("moe"), "namespace": "ns",
                "ownerReferences": [{"uid": uid, "controller": True, "kind": "ModelDeployment",
                                     "name": "moe", "apiVersion": "mainsail.dev/v1alpha1"}],
            },
            "data": {"adminToken": base64.b64encode(b"tok").decode()},
        })  # fmt: skip
    got = api.get("mainsail.dev/v1alpha1", "ModelDeployment", "ns", "moe")
    assert got is not None
    return got


def _load(current: int, running: int, switching: bool = False) -> dict[str, ExpertSignals]:
    return {"unified": ExpertSignals(current, 2, running, 0, (5.0,) * 4, switching)}


async def test_passes_scale_up_hold_and_report() -> None:
    api, router, now = InMemoryKubeApi(), ScriptedRouter(), [1000.0]
    scaler = ExpertScaler(api, router, OperatorSettings(), clock=lambda: now[0])

    async def run() -> Any:
        body = api.get("mainsail.dev/v1alpha1", "ModelDeployment", "ns", "moe")
        assert body is not None
        return await scaler.run_pass(body), (body.get("status") or {}).get("expertParallel")

    _deployment(api)
    router.signals = _load(1, 2)  # 1 request per worker: ep 1 is enough
    result, _ = await run()
    assert result.changes == [] and router.asked == []
    router.signals = _load(1, 16)  # 8 per worker / 4 per rank = 2 ranks
    result, _ = await run()
    assert [(c.before, c.after, c.ok) for c in result.changes] == [(1, 2, True)]
    assert router.asked == [("tok", "w0", 2), ("tok", "w1", 2)]
    _, status = await run()  # the next pass shows what was done
    unified = status["unified"]
    assert unified["target"] == 2 and unified["lastChange"] == "1970-01-01T00:16:40Z"
    assert "8.0 requests per worker" in unified["reason"]
    now[0] += 5
    router.signals = _load(2, 40)  # more load within the cooldown: holds
    result, _ = await run()
    assert result.changes == [] and len(router.asked) == 2
    router.signals = None  # the router is gone: nothing changes, status says why
    result, _ = await run()
    _, status = await run()
    assert result.unavailable and "signals unavailable" in status["unified"]["reason"]


async def test_no_admin_credential_no_rescale() -> None:
    api, router = InMemoryKubeApi(), ScriptedRouter()
    scaler = ExpertScaler(api, router, OperatorSettings(), clock=lambda: 1000.0)
    body = _deployment(api, token=False)
    router.signals = _load(1, 16)
    result = await scaler.run_pass(body)
    assert result is not None and router.asked == []
    assert [c.ok for c in result.changes] == [False]
    assert "no router admin credential" in result.changes[0].reason


async def test_a_refused_change_is_reported_and_backs_off() -> None:
    api, router, now = InMemoryKubeApi(), ScriptedRouter(), [1000.0]
    scaler = ExpertScaler(api, router, OperatorSettings(), clock=lambda: now[0])
    body = _deployment(api)
    router.signals, router.fail = _load(1, 16), "HTTP 409: a change is still under way"
    first = await scaler.run_pass(body)
    assert first is not None and [c.ok for c in first.changes] == [False]
    now[0] += 1
    second = await scaler.run_pass(body)
    assert second is not None and second.changes == []  # cooldown after a failure too


async def test_deployments_without_an_expert_range_are_left_alone() -> None:
    api, router = InMemoryKubeApi(), ScriptedRouter()
    scaler = ExpertScaler(api, router, OperatorSettings())
    body = _deployment(api)
    del body["spec"]["engine"]
    assert await scaler.run_pass(body) is None


async def test_a_restarted_operator_keeps_the_cooldown_and_the_delay() -> None:
    """`lastChange` and `lowerSince` come back from status: a new scaler neither changes
    within the cooldown nor restarts the scale-down delay."""
    api, router, now = InMemoryKubeApi(), ScriptedRouter(), [1000.0]
    first = ExpertScaler(api, router, OperatorSettings(), clock=lambda: now[0])
    _deployment(api)

    def body() -> dict[str, Any]:
        got = api.get("mainsail.dev/v1alpha1", "ModelDeployment", "ns", "moe")
        assert got is not None
        return got

    router.signals = _load(1, 16)
    assert (await first.run_pass(body())) is not None and len(router.asked) == 2  # 1 -> 2
    router.degrees = {"w0": 2, "w1": 2}
    now[0] += 10
    router.signals = _load(2, 0)  # idle at 2: the delay starts
    await first.run_pass(body())
    status = body()["status"]["expertParallel"]["unified"]
    assert status["lowerSince"] == "1970-01-01T00:16:50Z" and status["target"] == 2
    restarted = ExpertScaler(api, router, OperatorSettings(), clock=lambda: now[0])
    now[0] += 59  # 69 s after the change, 59 s into the 60 s delay: hold
    result = await restarted.run_pass(body())
    assert result is not None and result.changes == []
    now[0] += 1  # the delay has passed (counted from before the restart)
    result = await restarted.run_pass(body())
    assert result is not None and [(c.before, c.after) for c in result.changes] == [(2, 1)]


def _peers_slice(*endpoints: tuple[str, bool]) -> dict[str, Any]:
    """The router-peers EndpointSlice the cluster's controller writes: (pod IP, serving)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "moe-router-peers-x1", "namespace": "ns",
                     "labels": {"kubernetes.io/service-name": "moe-router-peers"}},
        "ports": [{"name": "http", "port": 8000}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": serving},
                       "targetRef": {"kind": "Pod", "name": f"r-{ip}"}}
                      for ip, serving in endpoints],
    }  # fmt: skip


async def test_every_router_replica_is_read_and_a_missing_one_holds_a_lower_degree() -> None:
    """Two serving router replicas (a third still starting is not read): the workers they both
    hear count once, the requests each holds add up; with one replica unreadable the degree
    may go up on what was read but not down."""
    api, router, now = InMemoryKubeApi(), ScriptedRouter(), [1000.0]
    scaler = ExpertScaler(api, router, OperatorSettings(), clock=lambda: now[0])
    body = _deployment(api, routers=3)
    api.put(_peers_slice(("10.0.0.1", True), ("10.0.0.2", True), ("10.0.0.3", False)))
    a, b = "http://10.0.0.1:8000/metrics", "http://10.0.0.2:8000/metrics"
    # 2 workers running 4 in all, each replica holding 6: 16 / 2 workers / 4 per rank = ep 2
    # (summing the workers' figures too would ask for ep 4 or more; one replica alone: ep 1)
    router.per_url = {a: reading(_load(1, 4), queued=6), b: reading(_load(1, 4), queued=6)}
    result = await scaler.run_pass(body)
    assert sorted(router.read) == [a, b]
    assert result is not None and [(c.before, c.after) for c in result.changes] == [(1, 2)]
    assert "8.0 requests per worker" in result.status["unified"]["reason"]
    router.degrees = {"w0": 2, "w1": 2}
    idle = {a: reading(_load(2, 0)), b: reading(_load(2, 0))}
    now[0] += 1000  # past the cooldown: idle starts the scale-down delay
    router.per_url = idle
    assert (await scaler.run_pass(body)) is not None
    now[0] += 1000  # past the delay too: idle would go back to ep 1, if both were read
    router.per_url = {a: reading(_load(2, 0)), b: None}
    held = await scaler.run_pass(body)
    assert held is not None and held.changes == []
    assert "holding ep 2: only 1/2 router replicas read" in held.status["unified"]["reason"]
    router.per_url = {a: None, b: None}
    gone = await scaler.run_pass(body)
    assert gone is not None and gone.unavailable and a in gone.unavailable and b in gone.unavailable
    router.per_url = idle
    down = await scaler.run_pass(body)
    assert down is not None and [(c.before, c.after) for c in down.changes] == [(2, 1)]
