"""The autoscaler: its policy (table-driven and Hypothesis), the router -> operator signal
contract (a real router registry rendered and parsed), and passes over an in-memory API."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mainsail.operator.autoscale_policy import PoolSignals, clamp, raw_replicas, stabilize
from mainsail.operator.autoscaler import Autoscaler
from mainsail.operator.router_signals import SignalsUnavailable, parse_signals
from mainsail.operator.settings import OperatorSettings
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.fleet.pool_load import PoolLoadCollector
from mainsail.router.fleet.registry import WorkerEntry
from mainsail.router.metrics import RouterMetrics
from mainsail.spec.pools import Autoscaling

pytestmark = pytest.mark.unit

AUTO = Autoscaling(
    enabled=True,
    min_replicas=1,
    max_replicas=8,
    target_queue_depth=4,
    target_kv_utilization=0.5,
    scale_down_delay_seconds=60,
)


def sig(
    workers: int = 2,
    running: int = 0,
    waiting: int = 0,
    queued: int = 0,
    used: int = 0,
    total: int = 2000,
) -> PoolSignals:
    return PoolSignals(workers, running, waiting, queued, used, total)


@pytest.mark.parametrize(
    ("signals", "want", "says"),
    [
        (sig(), 0, "idle"),
        (sig(running=3, used=100), 1, "in flight"),
        (sig(running=3, waiting=9, used=100), 3, "9 waiting"),  # ceil(9 / 4)
        (sig(running=3, waiting=2, queued=2, used=100), 1, "in flight"),  # 4 / 4 = 1
        (sig(running=3, waiting=3, queued=6, used=100), 3, "9 waiting"),  # router queue counts
        (sig(running=30, used=1500), 3, "KV cache 75% used"),  # 1500 / (0.5 * 1000)
        (sig(running=30, waiting=20, used=1500), 5, "20 waiting"),  # the larger proposal wins
        (sig(workers=0, total=0, queued=1), 1, "in flight"),  # scale from zero
    ],
)
def test_raw_replicas(signals: PoolSignals, want: int, says: str) -> None:
    rec = raw_replicas(AUTO, signals)
    assert rec.replicas == want
    assert says in rec.reason


def test_signals_refuse_negative_counts() -> None:
    with pytest.raises(ValueError, match="waiting"):
        sig(waiting=-1)


@pytest.mark.parametrize(
    ("current", "raw", "history", "want"),
    [
        (2, 5, [], 5),  # up at once, even with no history
        (2, 50, [], 8),  # capped at max
        (4, 1, [], 4),  # operator just started: no full window yet, hold
        (4, 1, [(50.0, 3)], 4),  # history does not reach back a whole window: hold
        (4, 1, [(0.0, 1), (50.0, 3)], 3),  # highest raw within the window
        (4, 1, [(0.0, 1), (50.0, 6)], 4),  # never above current on the way down
        (4, 0, [(0.0, 0), (70.0, 0)], 1),  # floored at min
    ],
)
def test_stabilize(current: int, raw: int, history: list[tuple[float, int]], want: int) -> None:
    assert stabilize(AUTO, current, raw, history, now=100.0) == want


def test_no_delay_scales_down_at_once() -> None:
    auto = AUTO.model_copy(update={"scale_down_delay_seconds": 0})
    assert stabilize(auto, 5, 2, [], now=10.0) == 2


@given(
    current=st.integers(0, 20),
    raw=st.integers(0, 50),
    history=st.lists(st.tuples(st.floats(0, 200), st.integers(0, 50)), max_size=8),
)
def test_stabilize_stays_in_bounds_and_rises_at_once(
    current: int, raw: int, history: list[tuple[float, int]]
) -> None:
    out = stabilize(AUTO, current, raw, history, now=200.0)
    assert AUTO.min_replicas <= out <= AUTO.max_replicas
    if raw >= current:
        assert out == clamp(AUTO, raw)
    else:
        assert out >= clamp(AUTO, raw)  # never below what the load asks for
        assert out <= max(clamp(AUTO, current), AUTO.min_replicas)  # never up on a lower ask


@given(
    base=st.builds(
        PoolSignals,
        workers=st.integers(1, 64),
        running=st.integers(0, 500),
        waiting=st.integers(0, 500),
        queued=st.integers(0, 100),
        kv_blocks_used=st.integers(0, 10_000),
        kv_blocks_total=st.integers(10_000, 20_000),
    ),
    more_waiting=st.integers(0, 100),
    more_kv=st.integers(0, 5_000),
)
def test_more_load_never_asks_for_fewer(base: PoolSignals, more_waiting: int, more_kv: int) -> None:
    heavier = PoolSignals(
        base.workers,
        base.running,
        base.waiting + more_waiting,
        base.queued,
        base.kv_blocks_used + more_kv,
        base.kv_blocks_total,
    )
    assert raw_replicas(AUTO, heavier).replicas >= raw_replicas(AUTO, base).replicas


def _entry(
    worker: str, role: str, running: int, waiting: int, used: int, total: int
) -> WorkerEntry:
    info = pb.WorkerInfo(worker_id=worker, address=f"{worker}:1", role=role, model="m")
    load = pb.LoadSnapshot(
        running=running, waiting=waiting, kv_blocks_used=used, kv_blocks_total=total
    )
    entry = WorkerEntry(info=info, last_seen=0.0, load=load)
    entry.outstanding = running + waiting
    return entry


def test_router_exposition_parses_into_signals() -> None:
    """The router's real /metrics text (registry gauges + queue) is what the operator reads."""
    entries = [
        _entry("a", "decode", running=5, waiting=2, used=300, total=1000),
        _entry("b", "decode", running=1, waiting=0, used=100, total=1000),
        _entry("c", "prefill", running=2, waiting=7, used=50, total=500),
    ]
    metrics = RouterMetrics()
    metrics.registry.register(PoolLoadCollector(lambda: entries))
    metrics.queued.set(3)
    metrics.workers.labels("decode").set(2)
    metrics.workers.labels("prefill").set(1)
    signals = parse_signals(metrics.render().decode())
    assert signals["decode"] == PoolSignals(2, 6, 2, 3, 400, 2000)
    assert signals["prefill"] == PoolSignals(1, 2, 7, 3, 50, 500)
    assert signals["unified"] == PoolSignals(0, 0, 0, 3, 0, 0)


def test_non_router_metrics_are_unavailable() -> None:
    with pytest.raises(SignalsUnavailable):
        parse_signals("# HELP other_metric x\n# TYPE other_metric gauge\nother_metric 1\n")


class MemoryApi:
    """An in-memory stand-in for the API server (the fast tier; the integration test uses a
    real one): ServingPools by name and one ModelDeployment's status."""

    def __init__(self, pools: dict[str, int], slices: list[dict[str, Any]] | None = None) -> None:
        self.pools = pools
        self.slices = slices or []  # the router-peers EndpointSlices
        self.status: dict[str, Any] = {}
        self.patches: list[tuple[str, int]] = []

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> Any:
        assert (kind, selector) == ("EndpointSlice", "kubernetes.io/service-name=chat-router-peers")
        return self.slices

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        if name not in self.pools:
            return None
        return {"spec": {"replicas": self.pools[name]}}

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> Any:
        self.pools[name] = patch["spec"]["replicas"]
        self.patches.append((name, self.pools[name]))
        return {}

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Mapping[str, Any]
    ) -> Any:
        self.status.update(status)
        return {"status": self.status}


class ScriptedSignals:
    def __init__(self) -> None:
        self.now: dict[str, PoolSignals] | None = None
        self.per_url: dict[str, dict[str, PoolSignals] | None] = {}  # overrides `now`
        self.urls: list[str] = []

    async def pool_signals(self, url: str) -> Mapping[str, PoolSignals]:
        self.urls.append(url)
        now = self.per_url.get(url, self.now)
        if now is None:
            raise SignalsUnavailable("connection refused")
        return now


def _body(delay: int = 30) -> dict[str, Any]:
    return {
        "metadata": {"name": "chat", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {
            "model": {"name": "tiny", "generate": "llama"},
            "pools": {
                "unified": {
                    "replicas": 1,
                    "autoscaling": {
                        "enabled": True,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "targetQueueDepth": 2,
                        "scaleDownDelaySeconds": delay,
                    },
                }
            },
        },
    }


async def test_passes_scale_up_hold_then_down_and_survive_a_dead_router() -> None:
    api, source = MemoryApi({"chat-unified": 1}), ScriptedSignals()
    clock = [0.0]
    scaler = Autoscaler(
        api,  # type: ignore[arg-type]
        source,
        OperatorSettings(),
        clock=lambda: clock[0],
        wall=lambda: datetime.datetime(2026, 11, 30, tzinfo=datetime.UTC),
    )
    body = _body(delay=30)

    source.now = {"unified": sig(workers=1, running=4, waiting=6, total=1000, used=100)}
    result = await scaler.run_pass(body)
    assert api.pools["chat-unified"] == 3  # ceil(6 / 2)
    assert [(c.before, c.after) for c in result.changes] == [(1, 3)]
    assert api.status["autoscaling"]["unified"]["desiredReplicas"] == 3
    assert source.urls == ["http://chat-router.ns.svc:8000/metrics"]

    source.now = {"unified": sig(workers=3, total=3000)}  # idle, but within the delay
    for t in (10.0, 20.0):
        clock[0] = t
        await scaler.run_pass(body)
    assert api.pools["chat-unified"] == 3
    assert "holding 3" in api.status["autoscaling"]["unified"]["reason"]

    source.now = None  # router down: nothing changes, status says why
    clock[0] = 35.0
    result = await scaler.run_pass(body)
    assert result.unavailable and api.pools["chat-unified"] == 3
    assert "signals unavailable" in api.status["autoscaling"]["unified"]["reason"]

    source.now = {"unified": sig(workers=3, total=3000)}
    clock[0] = 45.0  # the window [15, 45] holds only idle passes (0 was the burst)
    result = await scaler.run_pass(body)
    assert api.pools["chat-unified"] == 1
    assert [(c.before, c.after) for c in result.changes] == [(3, 1)]


async def test_pools_without_autoscaling_are_left_alone() -> None:
    api, source = MemoryApi({"chat-unified": 2}), ScriptedSignals()
    body = _body()
    body["spec"]["pools"]["unified"]["autoscaling"]["enabled"] = False
    scaler = Autoscaler(api, source, OperatorSettings())  # type: ignore[arg-type]
    assert (await scaler.run_pass(body)).changes == []
    assert source.urls == [] and api.patches == [] and api.status == {}


def test_metrics_url_template_is_validated() -> None:
    with pytest.raises(ValueError, match="router_metrics_url"):
        OperatorSettings(router_metrics_url="http://{router}:{nope}/metrics")
    with pytest.raises(ValueError, match="http"):
        OperatorSettings(router_metrics_url="{router}/metrics")


async def test_the_scale_down_delay_survives_an_operator_restart() -> None:
    api, source = MemoryApi({"chat-unified": 1}), ScriptedSignals()
    clock = [1_000.0]

    def operator() -> Autoscaler:  # a fresh process: nothing in memory
        return Autoscaler(api, source, OperatorSettings(), clock=lambda: clock[0])  # type: ignore[arg-type]

    body = _body(delay=30)
    first = operator()
    source.now = {"unified": sig(workers=1, running=4, waiting=6, total=1000, used=100)}
    await first.run_pass(body)
    assert api.pools["chat-unified"] == 3
    source.now = {"unified": sig(workers=3, total=3000)}  # idle from t=1010 on
    clock[0] = 1_010.0
    await first.run_pass(body)
    kept = api.status["autoscaling"]["unified"]["recommendations"]
    assert kept == [
        {"time": "1970-01-01T00:16:40Z", "replicas": 3},
        {"time": "1970-01-01T00:16:50Z", "replicas": 0},
    ]
    restarted = {**body, "status": api.status}

    clock[0] = 1_020.0  # restarted inside the window [990, 1020]: the burst still counts
    assert (await operator().run_pass(restarted)).changes == []
    assert api.pools["chat-unified"] == 3

    clock[0] = 1_045.0  # window [1015, 1045] only idle: down at once, no fresh delay
    result = await operator().run_pass(restarted)
    assert [(c.before, c.after) for c in result.changes] == [(3, 1)]

    api.pools["chat-unified"] = 3  # without the kept history a new process must hold
    assert (await operator().run_pass(body)).changes == []


def _slice(*endpoints: tuple[str, bool], port: int = 8000) -> dict[str, Any]:
    """An EndpointSlice of the router-peers Service: (pod IP, serving) per router pod."""
    return {
        "addressType": "IPv4",
        "ports": [{"name": "fleet", "port": 50052}, {"name": "http", "port": port}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": True, "serving": serving}}
            for ip, serving in endpoints
        ],
    }


async def test_every_router_replica_is_read_and_merged_and_a_missing_one_holds_scale_down() -> None:
    """Two serving replicas (a third starting is skipped): their held requests add up, the
    workers every replica hears are counted once; with one replica unreadable the pass may
    scale up on the other but not down."""
    api = MemoryApi(
        {"chat-unified": 1}, [_slice(("10.0.0.1", True), ("10.0.0.2", True), ("10.0.0.3", False))]
    )
    source = ScriptedSignals()
    clock = [0.0]
    scaler = Autoscaler(api, source, OperatorSettings(), clock=lambda: clock[0])  # type: ignore[arg-type]
    body = _body(delay=0)
    a, b = "http://10.0.0.1:8000/metrics", "http://10.0.0.2:8000/metrics"
    workers = {"workers": 2, "running": 4, "waiting": 2, "used": 100, "total": 2000}
    source.per_url = {
        a: {"unified": sig(**workers, queued=3)},
        b: {"unified": sig(**workers, queued=1)},
    }
    await scaler.run_pass(body)
    assert sorted(source.urls) == [a, b]
    assert api.pools["chat-unified"] == 3  # ceil((2 waiting + 3 + 1 held) / 2); a sum: 4
    assert "6 waiting" in api.status["autoscaling"]["unified"]["reason"]

    source.per_url = {a: {"unified": sig(workers=3, total=3000)}, b: None}
    for t in (10.0, 20.0):  # at 20 the delay is over: only the missing replica holds
        clock[0] = t
        result = await scaler.run_pass(body)
        assert result.changes == [] and api.pools["chat-unified"] == 3
    assert "1/2 router replicas read" in api.status["autoscaling"]["unified"]["reason"]

    source.per_url[b] = {"unified": sig(workers=3, total=3000, queued=8)}  # back: up on its queue
    clock[0] = 30.0
    await scaler.run_pass(body)
    assert api.pools["chat-unified"] == 4

    source.per_url = {a: None, b: None}
    result = await scaler.run_pass(body)
    assert result.unavailable and a in result.unavailable and b in result.unavailable
