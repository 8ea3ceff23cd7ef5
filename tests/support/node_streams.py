"""Streams through a deployment's router on the test bed's node, as a client sees them, and the
router's admin handles the cluster tests steer them with (drain, migrate, registered workers).

Why a module: the tests that move requests between worker pods — by hand, by a `kubectl
scale`, by the operator's autoscaler — all need the same three things: a long greedy stream
whose chunk times are recorded, a way to place new streams on one chosen worker (drain the
others at the router), and a check that a disturbed stream is exactly the undisturbed one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mainsail.spec.worker_metrics import WORKER_METRICS_PORT
from support.node import Node
from support.node_deploy import admin, scrape, worker_pods, workers


@dataclass(frozen=True)
class Greedy:
    """One greedy completion request (EOS ignored, so it always runs ``max_tokens``)."""

    model: str
    prompt: str
    max_tokens: int
    timeout_s: float = 400.0


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
        `mainsail_router_kv_migration_pause_seconds`."""
        times = [t for t, _ in self.chunks]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def duration(self) -> float:
        return self.chunks[-1][0] - self.chunks[0][0] if self.chunks else 0.0

    def median_gap(self) -> float:
        times = [t for t, _ in self.chunks]
        return statistics.median(b - a for a, b in itertools.pairwise(times))

    def chunks_after(self, moment: float) -> int:
        """Chunks that arrived after ``moment`` (`time.monotonic()`)."""
        return sum(1 for t, _ in self.chunks if t > moment)


def stream(base_url: str, api_key: str, request: Greedy, record: Stream) -> str:
    """``request`` streamed (call it inside the node's namespace); fills ``record`` as chunks
    arrive and returns the whole text."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                           timeout=request.timeout_s)  # fmt: skip
    parts = client.completions.create(
        model=request.model, prompt=request.prompt, max_tokens=request.max_tokens,
        temperature=0, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    for part in parts:
        if not record.request_id:
            record.request_id = part.id.removeprefix("cmpl-")
            record.started.set()
        if part.choices:
            record.chunks.append((time.monotonic(), part.choices[0].text))
    record.started.set()
    return record.text()


def assert_same(got: str, want: str) -> None:
    """``got == want``, reported by where they part (pytest's diff of two 10k-character
    strings takes minutes)."""
    if got != want:
        at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
        at = min(len(got), len(want)) if at is None else at
        raise AssertionError(
            f"texts differ at character {at} (lengths {len(got)} vs {len(want)}): "
            f"{got[at : at + 40]!r} vs {want[at : at + 40]!r}"
        )


def delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    """How much the counter ``name`` grew between two scrapes."""
    return after.get(name, 0.0) - before.get(name, 0.0)


@dataclass
class Served:
    """A running deployment on the node: its router Service and the credentials to use it."""

    node: Node
    ns: str
    name: str
    router: str  # the router Service's IP
    key: str  # a client API key
    token: str  # the router's admin token

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

    def start(
        self, pool: concurrent.futures.ThreadPoolExecutor, request: Greedy
    ) -> tuple[Stream, concurrent.futures.Future[str]]:
        """``request`` streaming on ``pool``; returns once its first chunk (and so its id)
        arrived."""
        record = Stream()
        future = pool.submit(
            self.node.in_netns, stream, self.base, self.key, request, record,
            timeout=request.timeout_s + 30,
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
        logs = self.node.kubectl(
            "logs", "-n", self.ns, f"deployment/{self.name}-router", "--tail=500"
        )
        return [line for line in logs.stdout.splitlines() if needle in line]


@contextlib.contextmanager
def only_on(served: Served, worker: str) -> Iterator[None]:
    """New requests go to ``worker`` only: every other worker is drained meanwhile (no race
    with how fast the tiny model streams: a request is placed before it starts)."""
    others = sorted(set(served.workers()) - {worker})
    for other in others:
        served.drain(other)
    try:
        yield
    finally:
        for other in others:
            served.drain(other, on=False)


@dataclass
class Burst:
    """What a bounded load of whole completions got: how many answered, and every failure."""

    answered: int = 0
    failures: list[str] = field(default_factory=list)


def burst(
    base_url: str, api_key: str, request: Greedy, clients: int, stop: threading.Event,
    deadline_s: float,
) -> Burst:  # fmt: skip
    """``clients`` concurrent clients each sending ``request`` (not streamed) again and again
    until ``stop`` is set or ``deadline_s`` passed; call it inside the node's namespace (the
    client threads it starts are there too: a thread inherits its creator's namespace)."""
    import openai

    until = time.monotonic() + deadline_s
    lock, out = threading.Lock(), Burst()

    def client() -> None:
        api = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0,
                            timeout=request.timeout_s)  # fmt: skip
        while not stop.is_set() and time.monotonic() < until:
            try:
                reply = api.completions.create(
                    model=request.model, prompt=request.prompt, max_tokens=request.max_tokens,
                    temperature=0, extra_body={"ignore_eos": True},
                )  # fmt: skip
                assert reply.usage is not None
                assert reply.usage.completion_tokens == request.max_tokens, reply.usage
                with lock:
                    out.answered += 1
            except Exception as exc:  # every failure is evidence: kept, then asserted on
                with lock:
                    out.failures.append(f"{type(exc).__name__}: {exc}"[:300])
                return  # one per client: a dead router must not spin this loop

    with concurrent.futures.ThreadPoolExecutor(clients, thread_name_prefix="burst") as pool:
        for done in [pool.submit(client) for _ in range(clients)]:
            done.result()
    return out
