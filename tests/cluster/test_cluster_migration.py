"""Requests move between worker pods with their KV, on a real node under the operator's own
NetworkPolicies and mutual TLS; a scale-in drains the worker it removes, whether `kubectl
scale` or the operator's autoscaler asks for it; sharded workers (tensor and expert parallel
ranks on Ray), two of them behind the router, serve what one process serves.

Everything is real: the chart's operator, router, Redis and Ray pods from the images
`deploy/images/build.py` builds, kube-router's firewall controller enforcing the policies the
operator made (`support.node_netpol`), the worker plane's token and mutual TLS from the Secret
the operator issued, and the `openai` SDK talking to the router Service. Evidence that a move
took the KV (and did not recompute): the router's `mainsail_router_kv_migrations` counter,
and the target worker's own `vllm:prompt_tokens` counter, which a recompute would raise by the
whole context and an adopted request leaves unchanged.

One chart install for the module (autoscaler passes every 2 s); `tiny` (tp=1, two workers,
pool CPU 100m so three fit the 2-core node) for the moves, then a sharded MoE deployment in
its place. Images: the cached tars of the current sources; without them the module skips,
unless `MAINSAIL_IMAGES_REQUIRED=1`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.greedy import ask_greedy
from support.node import Node, NodeError
from support.node_deploy import (
    apply_ready,
    client_key,
    credentials,
    delete_deployment,
    diagnostics,
    events,
    install_chart,
    worker_pods,
)
from support.node_netpol import enforced_policies, enforcing_network_policies
from support.node_streams import (
    Greedy,
    Served,
    Stream,
    assert_same,
    burst,
    delta,
    only_on,
    stream,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "tiny.yaml"
PROMPT = "The harbour master counted the sails as the ships came home"
MAX_TOKENS = 4000  # ~16 s at the ~250 tokens/s seen here: outlasts a move and a scale-in
MAX_MODEL_LEN = 4096  # the generated checkpoint's positions (tiny.yaml says 1024)
STREAM_TIMEOUT_S = 400.0
LONG = Greedy("tiny-llama", PROMPT, MAX_TOKENS, STREAM_TIMEOUT_S)
DRAINED_STREAMS = 3
AUTOSCALE_SECONDS = 2.0  # the chart's autoscaleSeconds here (15 by default)


@pytest.fixture(scope="module")
def chart(
    node_cluster: Node, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Node, str]]:
    """The chart installed with kube-router enforcing NetworkPolicies; (node, namespace)."""
    log = tmp_path_factory.mktemp("kube-router") / "kube-router.log"
    with enforcing_network_policies(node_cluster, log) as node:
        ns = f"migrate-{os.getpid()}"
        node.create_namespace(ns)
        try:
            install_chart(node, ns, "--set", f"autoscaleSeconds={AUTOSCALE_SECONDS:g}")
            yield node, ns
        finally:
            node.helm("uninstall", "mainsail", "--namespace", ns, check=False)
            node.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def tiny(chart: tuple[Node, str]) -> Served:
    """`tiny` applied and Ready (pool CPU 100m), its policies enforced and its worker plane
    on mutual TLS."""
    node, ns = chart
    md = yaml.safe_load(EXAMPLE.read_text())
    md["spec"]["pools"]["unified"]["resources"] = {"cpu": "100m", "memory": "3Gi"}
    md["spec"]["engine"]["maxModelLen"] = MAX_MODEL_LEN
    print(f"tiny: apply -> Ready {apply_ready(node, ns, md):.1f} s")
    secret = credentials(node, ns, "tiny")
    assert {"ca.crt", "tls.crt", "tls.key"} <= set(secret)  # the worker plane's mutual TLS
    expected = {f"{ns}/tiny-workers", f"{ns}/tiny-router", f"{ns}/tiny-cache"}
    node.wait_for(lambda: expected <= enforced_policies(node), timeout=60,
                  what="kube-router enforcing tiny's NetworkPolicies")  # fmt: skip
    router = node.service_ip(ns, "tiny-router")
    return Served(node, ns, "tiny", router, client_key(secret), secret["adminToken"].strip())


@pytest.fixture(scope="module")
def undisturbed(tiny: Served) -> str:
    """PROMPT's greedy stream with nothing moving it."""
    record = Stream()
    text = tiny.node.in_netns(stream, tiny.base, tiny.key, LONG, record,
                              timeout=STREAM_TIMEOUT_S + 30)  # fmt: skip
    print(
        f"undisturbed: {len(record.chunks)} chunks, median gap {record.median_gap() * 1e3:.1f} ms"
    )
    return text


def test_a_stream_moves_with_its_kv_between_worker_pods(tiny: Served, undisturbed: str) -> None:
    """`POST /requests/<id>/migrate` to the other worker pod, under the enforced policies and
    mutual TLS: the source worker sends the KV to the target over `ReceiveKV` (worker to
    worker), the client's stream carries on with exactly the undisturbed tokens, the router
    counts one KV move and no fallback, and the target never prefilled the context."""
    source, target = sorted(tiny.workers())
    router_before, target_before = tiny.router_metrics(), tiny.worker_metrics(target)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with only_on(tiny, source):
            record, running = tiny.start(pool, LONG)
        asked = time.monotonic()
        reply = tiny.migrate(record.request_id, target)
        assert reply == {"request": record.request_id, "migrating": True, "worker": target}
        assert_same(running.result(timeout=STREAM_TIMEOUT_S + 60), undisturbed)
    router_after, target_after = tiny.router_metrics(), tiny.worker_metrics(target)
    moved_at = sum(1 for t, _ in record.chunks if t < asked)
    print(
        f"KV move after {moved_at} of {len(record.chunks)} chunks: longest client gap "
        f"{record.max_gap() * 1e3:.0f} ms (median {record.median_gap() * 1e3:.1f} ms), "
        f"stream {record.duration():.1f} s"
    )
    print("\n".join(tiny.router_log("with its KV")))
    pause = delta(router_after, router_before, "mainsail_router_kv_migration_pause_seconds_sum")
    print(f"source's pause (router histogram): {pause * 1e3:.1f} ms")
    assert delta(router_after, router_before, "mainsail_router_kv_migrations_total") == 1
    assert delta(router_after, router_before, "mainsail_router_kv_migration_failures_total") == 0
    assert delta(router_after, router_before, "mainsail_router_resumes_total") == 0
    # Adopted, not recomputed: the target generated the rest without prefilling anything.
    assert delta(target_after, target_before, "vllm:prompt_tokens_total") == 0
    generated = delta(target_after, target_before, "vllm:generation_tokens_total")
    assert 0 < generated < MAX_TOKENS


def test_scale_in_drains_the_removed_worker_and_its_streams_move(
    tiny: Served, undisturbed: str
) -> None:
    """`kubectl scale servingpool --replicas 3`, then three streams placed on the pod the
    operator will remove (the youngest: `scale_down.choose_removals`), then back to 2: the
    operator drains that worker before KubeRay deletes its pod, every stream moves off it with
    its KV and completes with exactly the undisturbed tokens; none fails."""
    node, ns = tiny.node, tiny.ns
    node.kubectl("scale", "-n", ns, "servingpool", "tiny-unified", "--replicas=3")

    def three() -> bool:
        pods = set(worker_pods(node, ns))
        return len(pods) == 3 and set(tiny.workers()) == pods

    node.wait_for(three, timeout=600, what="a third worker registered under its pod's name")
    pods = worker_pods(node, ns)
    doomed = max(pods, key=lambda p: pods[p]["metadata"]["creationTimestamp"])
    router_before = tiny.router_metrics()
    with concurrent.futures.ThreadPoolExecutor(DRAINED_STREAMS) as pool:
        with only_on(tiny, doomed):
            streams = [tiny.start(pool, LONG) for _ in range(DRAINED_STREAMS)]
        assert tiny.outstanding()[doomed] == DRAINED_STREAMS
        scaled = time.monotonic()
        node.kubectl("scale", "-n", ns, "servingpool", "tiny-unified", "--replicas=2")
        for _, running in streams:
            assert_same(running.result(timeout=STREAM_TIMEOUT_S + 60), undisturbed)
        after = [r.chunks_after(scaled) for r, _ in streams]
    router_after = tiny.router_metrics()
    print(f"scale-in: chunks after `kubectl scale` {after}; longest client gaps "
          + ", ".join(f"{r.max_gap() * 1e3:.0f} ms" for r, _ in streams)
          + "; streams " + ", ".join(f"{r.duration():.1f} s" for r, _ in streams))  # fmt: skip
    print("\n".join(tiny.router_log("with its KV")))
    node.wait_for(
        lambda: set(worker_pods(node, ns)) == set(tiny.workers()) == set(pods) - {doomed},
        timeout=300, what=f"back to two workers, without {doomed}",
    )  # fmt: skip
    drained = [e for e in events(node, ns, "tiny") if e["reason"] == "Drained"]
    assert any(doomed in e["message"] for e in drained), drained
    moved = delta(router_after, router_before, "mainsail_router_kv_migrations_total")
    assert moved == DRAINED_STREAMS, f"{moved} moved: streams ended before the drain? {after}"
    assert delta(router_after, router_before, "mainsail_router_kv_migration_failures_total") == 0
    assert delta(router_after, router_before, "mainsail_router_resumes_total") == 0


# --- The operator's autoscaler: scale up under load, scale in by draining ------------------

BURST = Greedy("tiny-llama", "Gulls over the harbour wall", 48, 300.0)
HOLD_S = 3600  # scaleDownDelaySeconds while the test places streams: no scale-in meanwhile


def _autoscaling(node: Node, ns: str, **fields: Any) -> None:
    """Merge ``fields`` into tiny's `spec.pools.unified.autoscaling` (no pod rolls: pool sizes
    are not in the config document the pods mount)."""
    patch = {"spec": {"pools": {"unified": {"autoscaling": fields}}}}
    node.kubectl("patch", "-n", ns, "modeldeployment", "tiny", "--type=merge",
                 "-p", json.dumps(patch))  # fmt: skip


def _pool_size(node: Node, ns: str) -> int:
    """The ServingPool's `spec.replicas` (what the autoscaler writes)."""
    return int(node.kubectl("get", "servingpool", "tiny-unified", "-n", ns,
                            "-o", "jsonpath={.spec.replicas}").stdout)  # fmt: skip


def _serving(tiny: Served, count: int) -> bool:
    """``count`` worker pods, each one's worker registered under its name."""
    pods = set(worker_pods(tiny.node, tiny.ns))
    return len(pods) == count and set(tiny.workers()) == pods


def test_the_autoscaler_drains_the_worker_it_removes(tiny: Served, undisturbed: str) -> None:
    """The operator's autoscaler, not `kubectl`, resizes the pool (`autoscaling` 1..2, target
    queue depth 1): idle, it scales in to one worker; a bounded burst of whole completions
    (the engine's `maxNumSeqs` + 8 at once, so requests wait) scales it up to two; once the
    new worker serves, the burst stops and three long streams are placed on the new pod (the
    youngest, which a scale-in removes). Then the scale-down delay, held long until now, is
    set to 0: the next pass scales in, the operator drains that worker before KubeRay deletes
    its pod, and every stream moves off it with its KV and completes with exactly the
    undisturbed tokens; no burst request and no stream fails; events say ScaledUp, ScaledDown
    and Drained (naming the pod), status says 1."""
    node, ns = tiny.node, tiny.ns
    engine = yaml.safe_load(EXAMPLE.read_text())["spec"]["engine"]
    clients = int(engine["maxNumSeqs"]) + 8
    _autoscaling(node, ns, enabled=True, minReplicas=1, maxReplicas=2, targetQueueDepth=1,
                 scaleDownDelaySeconds=0)  # fmt: skip
    try:
        node.wait_for(lambda: _pool_size(node, ns) == 1 and _serving(tiny, 1), timeout=300,
                      what="the autoscaler scaling the idle pool in to one worker")  # fmt: skip
        _autoscaling(node, ns, scaleDownDelaySeconds=HOLD_S)
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1 + DRAINED_STREAMS) as pool:
            started = time.monotonic()
            load = pool.submit(node.in_netns, burst, tiny.base, tiny.key, BURST, clients, stop,
                               900.0, timeout=1000)  # fmt: skip
            try:
                node.wait_for(lambda: load.done() or _serving(tiny, 2), timeout=900,
                              what="a second worker serving under the burst")  # fmt: skip
            finally:
                stop.set()
            scaled_up = time.monotonic() - started
            loaded = load.result(timeout=400)
            assert not loaded.failures, loaded.failures[:5]
            assert _pool_size(node, ns) == 2 and _serving(tiny, 2)
            pods = worker_pods(node, ns)
            doomed = max(pods, key=lambda p: pods[p]["metadata"]["creationTimestamp"])
            router_before = tiny.router_metrics()
            with only_on(tiny, doomed):
                streams = [tiny.start(pool, LONG) for _ in range(DRAINED_STREAMS)]
            assert tiny.outstanding()[doomed] == DRAINED_STREAMS
            released = time.monotonic()
            _autoscaling(node, ns, scaleDownDelaySeconds=0)
            for _, running in streams:
                assert_same(running.result(timeout=STREAM_TIMEOUT_S + 60), undisturbed)
        after = [r.chunks_after(released) for r, _ in streams]
        router_after = tiny.router_metrics()
        print(
            f"autoscaler: 1 -> 2 workers {scaled_up:.1f} s into a burst of {clients} clients "
            f"({loaded.answered} answered); scale-in released with {DRAINED_STREAMS} streams on "
            f"{doomed}: chunks after {after}; streams "
            + ", ".join(f"{r.duration():.1f} s" for r, _ in streams)
        )
        print("\n".join(tiny.router_log("with its KV")))
        node.wait_for(
            lambda: _pool_size(node, ns) == 1
            and set(worker_pods(node, ns)) == set(tiny.workers()) == set(pods) - {doomed},
            timeout=300, what=f"back to one worker, without {doomed}",
        )  # fmt: skip
        seen = events(node, ns, "tiny")
        drained = [e["message"] for e in seen if e["reason"] == "Drained"]
        assert any(doomed in message for message in drained), drained
        scaled = {(e["reason"], e["message"].split(" (")[0]) for e in seen}
        assert {("ScaledUp", "unified: 1 -> 2"), ("ScaledDown", "unified: 2 -> 1")} <= scaled
        md = json.loads(node.kubectl("get", "modeldeployment", "tiny", "-n", ns,
                                     "-o", "json").stdout)  # fmt: skip
        assert md["status"]["autoscaling"]["unified"]["desiredReplicas"] == 1
        moved = delta(router_after, router_before, "mainsail_router_kv_migrations_total")
        assert moved == DRAINED_STREAMS, f"{moved} moved: streams ended before the drain? {after}"
        assert delta(router_after, router_before,
                     "mainsail_router_kv_migration_failures_total") == 0  # fmt: skip
        assert delta(router_after, router_before, "mainsail_router_resumes_total") == 0
    except (subprocess.CalledProcessError, NodeError):
        print(diagnostics(node, ns, "tiny"))
        raise
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # keep the cause
            _autoscaling(node, ns, enabled=False)


# --- Model shards: tensor and expert parallel ranks on the node's Ray --------------------------

SHARDED = "shards"
SHARD_TOKENS = 24


def _sharded_document() -> dict[str, Any]:
    """The tiny MoE (Mixtral-style) with attention split over 2 tensor-parallel ranks and its
    experts over 2 expert-parallel ranks, two such workers (one pod each), no cache pool."""
    return {
        "apiVersion": "mainsail.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": SHARDED},
        "spec": {
            "model": {"name": "tiny-mixtral", "generate": "mixtral"},
            "engine": {
                "blockSize": 16, "maxModelLen": 1024, "maxNumSeqs": 8,
                "tensorParallel": 2, "expertParallel": {"min": 2, "max": 2},
            },
            "pools": {
                "unified": {"replicas": 2, "resources": {"cpu": "100m", "memory": "3Gi"}},
                "cache": {"enabled": False},
            },
        },
    }  # fmt: skip


def _one_process_text(prompt: str) -> str:
    """What one engine process (tp=1, no expert ranks) generates for ``prompt`` on the same
    generated checkpoint (`generate: mixtral`, seed 0), tokenized as the router does."""
    from mainsail.spec.tokenizer import Tokenizer
    from mainsail.workers.checkpoint import generate_checkpoint
    from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

    with tempfile.TemporaryDirectory(prefix="mainsail-mixtral-") as tmp:
        model = generate_checkpoint("mixtral", Path(tmp) / "m", seed=0)
        engine = Engine(model, EngineConfig(max_model_len=1024))
        params = SamplingParams(temperature=0.0, max_tokens=SHARD_TOKENS, ignore_eos=True)
        engine.add_request(EngineRequest("reference", Tokenizer(model).encode(prompt), params))
        text: list[str] = []
        for _ in range(10 * SHARD_TOKENS + 100):
            if not engine.has_unfinished():
                return "".join(text)
            text += [o.new_text for o in engine.step()]
    raise AssertionError("the reference engine did not finish")


def test_two_sharded_moe_workers_each_serve_what_one_process_serves(tiny: Served) -> None:
    """`engine.tensorParallel: 2`, `expertParallel: {min: 2, max: 2}`, two replicas, on the
    node: each worker pod's Ray offers one CPU per rank (the operator's `num-cpus`), each
    worker places its two rank actors on its own pod, both register under their pods' names,
    and the router Service answers a greedy prompt — streamed and not, sent to each worker in
    turn — with exactly what one unsharded engine process generates on the same checkpoint."""
    node, ns = tiny.node, tiny.ns
    delete_deployment(node, ns, "tiny")  # the 2-core node has no CPU for both routers
    expected = _one_process_text(PROMPT)
    answers: dict[str, tuple[str, str, int]] = {}
    try:
        print(f"shards: apply -> Ready {apply_ready(node, ns, _sharded_document()):.1f} s")
        secret = credentials(node, ns, SHARDED)
        shards = Served(node, ns, SHARDED, node.service_ip(ns, f"{SHARDED}-router"),
                        client_key(secret), secret["adminToken"].strip())  # fmt: skip
        pods = set(worker_pods(node, ns))
        assert len(pods) == 2 and set(shards.workers()) == pods
        for worker in sorted(pods):
            with only_on(shards, worker):
                answers[worker] = node.in_netns(
                    ask_greedy, shards.base, shards.key, "tiny-mixtral", PROMPT, SHARD_TOKENS,
                    timeout=300,
                )  # fmt: skip
    except BaseException:
        print(diagnostics(node, ns, SHARDED))
        raise
    finally:  # its pods hold CPU until gone: the next module's deployment needs it
        with contextlib.suppress(subprocess.CalledProcessError, NodeError):
            delete_deployment(node, ns, SHARDED)
    assert answers == dict.fromkeys(pods, (expected, expected, SHARD_TOKENS))
