"""Requests move between worker pods with their KV, on a real node under the operator's own
NetworkPolicies and mutual TLS; a scale-in drains the worker it removes; a sharded worker
(tensor and expert parallel ranks on Ray) serves what one process serves.

Everything is real: the chart's operator, router, Redis and Ray pods from the images
`deploy/images/build.py` builds, kube-router's firewall controller enforcing the policies the
operator made (`support.node_netpol`), the worker plane's token and mutual TLS from the Secret
the operator issued, and the `openai` SDK talking to the router Service. Evidence that a move
took the KV (and did not recompute): the router's `mainsail_router_kv_migrations` counter,
and the target worker's own `vllm:prompt_tokens` counter, which a recompute would raise by the
whole context and an adopted request leaves unchanged.

One chart install for the module; `tiny` (tp=1, two workers, pool CPU 100m so three fit the
2-core node) for the moves, then a sharded MoE deployment in its place. Images: the cached
tars of the current sources; without them the module skips, unless
`MAINSAIL_IMAGES_REQUIRED=1`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.greedy import ask_greedy
from support.node import Node, NodeError
from support.node_deploy import (
    admin,
    apply_ready,
    client_key,
    credentials,
    delete_deployment,
    diagnostics,
    events,
    install_chart,
    scrape,
    worker_pods,
    workers,
)
from support.node_netpol import enforced_policies, enforcing_network_policies

from mainsail.spec.worker_metrics import WORKER_METRICS_PORT

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "tiny.yaml"
PROMPT = "The harbour master counted the sails as the ships came home"
MAX_TOKENS = 4000  # ~16 s at the ~250 tokens/s seen here: outlasts a move and a scale-in
MAX_MODEL_LEN = 4096  # the generated checkpoint's positions (tiny.yaml says 1024)
STREAM_TIMEOUT_S = 400.0
DRAINED_STREAMS = 3


@dataclass
class Stream:
    """One streamed completion as the client saw it: chunk arrival times and texts."""

    request_id: str = ""
    started: threading.Event = field(default_factory=threading.Event)
    chunks: list[tuple[float, str]] = field(default_factory=list)

    def text(self) -> str:
        return "".join(t for _, t in self.chunks)

    def max_gap(self) -> float:
        """The longest pause between two chunks. Not a move's pause: the tiny model's greedy
        text has long runs of tokens that decode to nothing the stream can send yet (the same
        gaps come without any move); the source's reported pause is the router's
        `mainsail_router_kv_migration_pause_seconds`, printed with it."""
        times = [t for t, _ in self.chunks]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def duration(self) -> float:
        return self.chunks[-1][0] - self.chunks[0][0] if self.chunks else 0.0

    def median_gap(self) -> float:
        times = [t for t, _ in self.chunks]
        return statistics.median(b - a for a, b in itertools.pairwise(times))


def _stream(base_url: str, api_key: str, record: Stream) -> str:
    """A greedy stream of PROMPT (EOS ignored); fills ``record`` as chunks arrive."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                           timeout=STREAM_TIMEOUT_S)  # fmt: skip
    parts = client.completions.create(
        model="tiny-llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    for part in parts:
        if not record.request_id:
            record.request_id = part.id.removeprefix("cmpl-")
            record.started.set()
        if part.choices:
            record.chunks.append((time.monotonic(), part.choices[0].text))
    record.started.set()
    return record.text()


@dataclass
class Tiny:
    """The running `tiny` deployment: where its router is and the credentials to use it."""

    node: Node
    ns: str
    router: str  # the router Service's IP
    key: str
    token: str  # the admin token

    @property
    def base(self) -> str:
        return f"http://{self.router}:8000/v1"

    def workers(self) -> dict[str, dict[str, Any]]:
        return workers(self.node, self.router, self.token)

    def router_metrics(self) -> dict[str, float]:
        return scrape(self.node, f"http://{self.router}:8000/metrics")

    def worker_metrics(self, pod: str) -> dict[str, float]:
        ip = worker_pods(self.node, self.ns)[pod]["status"]["podIP"]
        return scrape(self.node, f"http://{ip}:{WORKER_METRICS_PORT}/metrics")

    def migrate(self, request_id: str, target: str) -> Any:
        url = f"http://{self.router}:8000/requests/{request_id}/migrate"
        return admin(self.node, url, self.token, {"worker": target})

    def start(self, pool: concurrent.futures.ThreadPoolExecutor) -> tuple[Stream, Any]:
        """A stream started; returns once its first chunk (and so its id) arrived."""
        record = Stream()
        future = pool.submit(
            self.node.in_netns, _stream, self.base, self.key, record,
            timeout=STREAM_TIMEOUT_S + 30,
        )  # fmt: skip
        assert record.started.wait(120), "no first chunk in 120 s"
        assert record.request_id, future.result()
        return record, future

    def drain(self, worker: str, on: bool = True) -> None:
        """Stop (or resume) sending new requests to ``worker`` (the router's admin API)."""
        url = f"http://{self.router}:8000/workers/{worker}/drain"
        reply = admin(self.node, url, self.token, method="POST" if on else "DELETE")
        assert reply["draining"] is on

    def outstanding(self) -> dict[str, int]:
        return {w: e["outstanding"] for w, e in self.workers().items()}

    def router_log(self, needle: str) -> list[str]:
        """Lines of the router pod's log that contain ``needle``."""
        logs = self.node.kubectl("logs", "-n", self.ns, "deployment/tiny-router", "--tail=500")
        return [line for line in logs.stdout.splitlines() if needle in line]


@contextlib.contextmanager
def only_on(tiny: Tiny, worker: str) -> Iterator[None]:
    """New requests go to ``worker`` only: every other worker is drained meanwhile (no race
    with how fast the tiny model streams: a request is placed before it starts)."""
    others = sorted(set(tiny.workers()) - {worker})
    for other in others:
        tiny.drain(other)
    try:
        yield
    finally:
        for other in others:
            tiny.drain(other, on=False)


def _assert_same(got: str, want: str) -> None:
    """``got == want``, reported by where they part (pytest's diff of two 10k-character
    strings takes minutes)."""
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        at = min(len(got), len(want)) if at is None else at
        raise AssertionError(
            f"texts differ at character {at} (lengths {len(got)} vs {len(want)}): "
            f"{got[at : at + 40]!r} vs {want[at : at + 40]!r}"
        )


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


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
            install_chart(node, ns)
            yield node, ns
        finally:
            node.helm("uninstall", "mainsail", "--namespace", ns, check=False)
            node.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def tiny(chart: tuple[Node, str]) -> Tiny:
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
    return Tiny(node, ns, router, client_key(secret), secret["adminToken"].strip())


@pytest.fixture(scope="module")
def undisturbed(tiny: Tiny) -> str:
    """PROMPT's greedy stream with nothing moving it."""
    record = Stream()
    text = tiny.node.in_netns(_stream, tiny.base, tiny.key, record, timeout=STREAM_TIMEOUT_S + 30)
    print(
        f"undisturbed: {len(record.chunks)} chunks, median gap {record.median_gap() * 1e3:.1f} ms"
    )
    return text


def test_a_stream_moves_with_its_kv_between_worker_pods(tiny: Tiny, undisturbed: str) -> None:
    """`POST /requests/<id>/migrate` to the other worker pod, under the enforced policies and
    mutual TLS: the source worker sends the KV to the target over `ReceiveKV` (worker to
    worker), the client's stream carries on with exactly the undisturbed tokens, the router
    counts one KV move and no fallback, and the target never prefilled the context."""
    source, target = sorted(tiny.workers())
    router_before, target_before = tiny.router_metrics(), tiny.worker_metrics(target)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with only_on(tiny, source):
            record, running = tiny.start(pool)
        asked = time.monotonic()
        reply = tiny.migrate(record.request_id, target)
        assert reply == {"request": record.request_id, "migrating": True, "worker": target}
        _assert_same(running.result(timeout=STREAM_TIMEOUT_S + 60), undisturbed)
    router_after, target_after = tiny.router_metrics(), tiny.worker_metrics(target)
    moved_at = sum(1 for t, _ in record.chunks if t < asked)
    print(
        f"KV move after {moved_at} of {len(record.chunks)} chunks: longest client gap "
        f"{record.max_gap() * 1e3:.0f} ms (median {record.median_gap() * 1e3:.1f} ms), "
        f"stream {record.duration():.1f} s"
    )
    print("\n".join(tiny.router_log("with its KV")))
    pause = _delta(router_after, router_before, "mainsail_router_kv_migration_pause_seconds_sum")
    print(f"source's pause (router histogram): {pause * 1e3:.1f} ms")
    assert _delta(router_after, router_before, "mainsail_router_kv_migrations_total") == 1
    assert _delta(router_after, router_before, "mainsail_router_kv_migration_failures_total") == 0
    assert _delta(router_after, router_before, "mainsail_router_resumes_total") == 0
    # Adopted, not recomputed: the target generated the rest without prefilling anything.
    assert _delta(target_after, target_before, "vllm:prompt_tokens_total") == 0
    generated = _delta(target_after, target_before, "vllm:generation_tokens_total")
    assert 0 < generated < MAX_TOKENS


def test_scale_in_drains_the_removed_worker_and_its_streams_move(
    tiny: Tiny, undisturbed: str
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
            streams = [tiny.start(pool) for _ in range(DRAINED_STREAMS)]
        assert tiny.outstanding()[doomed] == DRAINED_STREAMS
        scaled = time.monotonic()
        node.kubectl("scale", "-n", ns, "servingpool", "tiny-unified", "--replicas=2")
        for _, running in streams:
            _assert_same(running.result(timeout=STREAM_TIMEOUT_S + 60), undisturbed)
        after = [sum(1 for t, _ in r.chunks if t > scaled) for r, _ in streams]
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
    moved = _delta(router_after, router_before, "mainsail_router_kv_migrations_total")
    assert moved == DRAINED_STREAMS, f"{moved} moved: streams ended before the drain? {after}"
    assert _delta(router_after, router_before, "mainsail_router_kv_migration_failures_total") == 0
    assert _delta(router_after, router_before, "mainsail_router_resumes_total") == 0


# --- Model shards: tensor and expert parallel ranks on the node's Ray --------------------------

SHARDED = "shards"
SHARD_TOKENS = 24


def _sharded_document() -> dict[str, Any]:
    """The tiny MoE (Mixtral-style) with attention split over 2 tensor-parallel ranks and its
    experts over 2 expert-parallel ranks, one worker pod, no cache pool."""
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
                "unified": {"replicas": 1, "resources": {"cpu": "100m", "memory": "3Gi"}},
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


def test_a_sharded_moe_worker_serves_what_one_process_serves(tiny: Tiny) -> None:
    """`engine.tensorParallel: 2`, `expertParallel: {min: 2, max: 2}` on the node: the worker
    pod's Ray offers one CPU per rank (the operator's `num-cpus`), the worker places its two
    rank actors there, and the router Service answers a greedy prompt — streamed and not —
    with exactly what one unsharded engine process generates on the same checkpoint."""
    node, ns = tiny.node, tiny.ns
    delete_deployment(node, ns, "tiny")  # the 2-core node has no CPU for both routers
    expected = _one_process_text(PROMPT)
    try:
        print(f"shards: apply -> Ready {apply_ready(node, ns, _sharded_document()):.1f} s")
        base = f"http://{node.service_ip(ns, f'{SHARDED}-router')}:8000/v1"
        key = client_key(credentials(node, ns, SHARDED))
        whole, streamed, tokens = node.in_netns(
            ask_greedy, base, key, "tiny-mixtral", PROMPT, SHARD_TOKENS, timeout=300
        )
    except BaseException:
        print(diagnostics(node, ns, SHARDED))
        raise
    finally:  # its pods hold CPU until gone: the next module's deployment needs it
        with contextlib.suppress(subprocess.CalledProcessError, NodeError):
            delete_deployment(node, ns, SHARDED)
    assert (whole, streamed, tokens) == (expected, expected, SHARD_TOKENS)
