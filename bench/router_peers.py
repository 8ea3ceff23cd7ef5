"""Router overhead against peers: Mainsail's router, vllm-router and sglang-router, one run.

Setup (loopback, each part its own process): `--backends` fake model servers
(`bench/fake_openai_backend.py`: one `FakeEngine` behind both OpenAI HTTP, which the peers
proxy, and Mainsail's gRPC Worker API, which Mainsail's router calls; same tokens, same timing)
and the three routers in front of all of them, each at its default routing policy (Mainsail's
router and the backends' Worker API share a worker token generated for the run). The peers
come from PyPI into their own venv (`--peers-dir`, default ~/.cache/mainsail/peers), never
into the project's.

For every client library (httpx async, the `openai` SDK's AsyncOpenAI, aiohttp) and target
(each backend directly = the baseline, then each router), in an order rotated per repeat:
streamed TTFT p50/p99 over `--requests` sequential requests (after 10 warm-up requests), then
requests/s with `--clients` concurrent streaming clients sending `--concurrent-requests`. Added
latency = router TTFT - direct TTFT for the same client in the same repeat. Every figure is
the median over `--repeats`. Also reported: the router process's CPU time per request (from
/proc, over its whole run) and the busiest backend's share of requests.

Usage: `python bench/router_peers.py [--requests 1000] [--repeats 3] [--backends 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import httpx
import openai
import psutil  # type: ignore[import-untyped]

from mainsail.cli.local.redis_server import free_port
from mainsail.router.settings import RouterConfig
from mainsail.spec import sse
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV
from mainsail.workers.checkpoint import ensure_checkpoint

MAX_TOKENS = 16
PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
MODEL = "bench"
PEERS = {"vllm-router": "0.1.17", "sglang-router": "0.3.2"}
LIBS = ("httpx", "openai", "aiohttp")
HERE = Path(__file__).resolve().parent

Timing = tuple[float, float]  # (ttft, e2e) seconds
Call = Callable[[int], Awaitable[Timing]]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ensure_peers(root: Path) -> dict[str, str]:
    """Install each peer into ``root/venv``; returns name -> "" (ready) or why it is not."""
    py = root / "venv" / "bin" / "python"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    status: dict[str, str] = {}
    if not py.exists():
        root.mkdir(parents=True, exist_ok=True)
        cmd = (
            [uv, "venv", "-q", "--python", sys.executable] if uv else [sys.executable, "-m", "venv"]
        )
        subprocess.run([*cmd, str(root / "venv")], check=True, timeout=300)
    for name, version in PEERS.items():
        module = name.replace("-", "_")
        if subprocess.run([py, "-c", f"import {module}"], capture_output=True).returncode == 0:
            status[name] = ""
            continue
        pip = (
            [uv, "pip", "install", "-q", "--python", str(py)]
            if uv
            else [py, "-m", "pip", "install", "-q"]
        )
        proc = subprocess.run(
            [*pip, f"{name}=={version}"], capture_output=True, text=True, timeout=600
        )
        status[name] = (
            "" if proc.returncode == 0 else f"install failed: {proc.stderr.strip()[-300:]}"
        )
    return status


class Procs:
    """Child processes, each in its own session; stopped with SIGTERM, then SIGKILL. They share
    one worker token (this environment's, else one for the run)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = dict(os.environ)
        if not self.env.get(WORKER_TOKEN_ENV, "").strip():
            self.env[WORKER_TOKEN_ENV] = secrets.token_hex(32)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    """Until a streamed completion through ``url`` succeeds (routers see their workers)."""
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "stream": True}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            resp = httpx.post(url + "/v1/completions", json=body, timeout=5)
            if resp.status_code == 200 and "[DONE]" in resp.text:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready: {log.read_text()[-1500:]}")


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.name}: process did not start")
        time.sleep(0.05)
    ports: dict[str, int] = json.loads(path.read_text())
    return ports


# ---------------------------------------------------------------- clients


async def _httpx_call(client: httpx.AsyncClient) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for _event in sse.json_events(resp.aiter_lines()):
            if not ttft:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _openai_call(client: openai.AsyncOpenAI) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    stream = await client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=MAX_TOKENS, stream=True
    )
    async for _ in stream:
        if not ttft:
            ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


async def _aiohttp_call(session: aiohttp.ClientSession, url: str) -> Timing:
    t0 = time.perf_counter()
    ttft = 0.0
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "stream": True}
    async with session.post(url + "/v1/completions", json=body) as resp:
        resp.raise_for_status()
        async for _event in sse.json_events(resp.content):
            if not ttft:
                ttft = time.perf_counter() - t0
    return ttft, time.perf_counter() - t0


@asynccontextmanager
async def caller(lib: str, bases: list[str], pool: int) -> AsyncIterator[Call]:
    """A call function for ``lib``; request ``i`` goes to ``bases[i % len(bases)]``."""
    if lib == "httpx":
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        hx = [httpx.AsyncClient(base_url=b, timeout=30, limits=limits) for b in bases]
        try:
            yield lambda i: _httpx_call(hx[i % len(hx)])
        finally:
            for hc in hx:
                await hc.aclose()
    elif lib == "openai":
        oa = [
            openai.AsyncOpenAI(base_url=b + "/v1", api_key="none", max_retries=0, timeout=30)
            for b in bases
        ]
        try:
            yield lambda i: _openai_call(oa[i % len(oa)])
        finally:
            for oc in oa:
                await oc.close()
    else:
        connector = aiohttp.TCPConnector(limit=pool)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            yield lambda i: _aiohttp_call(session, bases[i % len(bases)])


async def measure(lib: str, bases: list[str], args: argparse.Namespace) -> dict[str, float]:
    """Sequential TTFT percentiles, then requests/s at ``args.clients`` concurrent streams."""
    async with caller(lib, bases, args.clients + 8) as call:
        for i in range(10):
            await call(i)
        timings = [await call(i) for i in range(args.requests)]
        counter = iter(range(args.concurrent_requests))

        async def client() -> None:
            for i in counter:
                await call(i)

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(args.clients))), 300)
        rps = args.concurrent_requests / (time.perf_counter() - t0)
    ttfts = [t for t, _ in timings]
    return {"ttft_p50": 1000 * _pct(ttfts, 0.5), "ttft_p99": 1000 * _pct(ttfts, 0.99), "rps": rps}


def _backend_totals(backends: list[str]) -> list[int]:
    return [int(httpx.get(b + "/stats", timeout=5).json()["total"]) for b in backends]


def start_all(
    args: argparse.Namespace, procs: Procs, peers: dict[str, str]
) -> tuple[list[str], dict[str, tuple[str, psutil.Process]]]:
    """Backends and routers; returns backend URLs and name -> (router URL, its process)."""
    tmp = procs.tmp
    config = RouterConfig(
        model_name=MODEL,
        model_dir=ensure_checkpoint("llama"),
        http_port=0,
        grpc_port=0,
        fleet_port=0,
        max_model_len=1024,
    )
    (tmp / "mainsail.json").write_text(config.model_dump_json())
    cmd = [sys.executable, "-m", "mainsail.router", "--config", str(tmp / "mainsail.json")]
    ms = procs.start("mainsail", [*cmd, "--ready-file", str(tmp / "mainsail.ready")])
    ms_ports = _wait_file(tmp / "mainsail.ready", ms)
    backends = []
    for k in range(args.backends):
        ready = tmp / f"backend{k}.ready"
        cmd = [sys.executable, str(HERE / "fake_openai_backend.py"), "--ready-file", str(ready)]
        cmd += ["--router", f"127.0.0.1:{ms_ports['fleet_port']}", "--worker-id", f"fake-{k}"]
        cmd += ["--token-delay", str(args.token_delay), "--model", MODEL]
        proc = procs.start(f"backend{k}", cmd)
        backends.append(f"http://127.0.0.1:{_wait_file(ready, proc)['http_port']}")
    for k, url in enumerate(backends):
        _wait_ready(url, procs.procs[k + 1], tmp / f"backend{k}.log")
    routers = {"mainsail": (f"http://127.0.0.1:{ms_ports['http_port']}", ms)}
    py = args.peers_dir / "venv" / "bin" / "python"
    launch = {
        "vllm-router": [str(py.parent / "vllm-router"), "--log-level", "warning"],
        "sglang-router": [str(py), "-m", "sglang_router.launch_router", "--log-level", "warn"],
    }
    for name, why in peers.items():
        if why:
            continue
        port = free_port()
        cmd = [*launch[name], "--host", "127.0.0.1", "--port", str(port)]
        # Both default their Prometheus exporter to the same port; give each its own.
        cmd += ["--prometheus-port", str(free_port()), "--worker-urls", *backends]
        if args.peer_policy:
            cmd += ["--policy", args.peer_policy]
        routers[name] = (f"http://127.0.0.1:{port}", procs.start(name, cmd))
    for name, (url, proc) in routers.items():
        try:
            _wait_ready(url, proc, tmp / f"{name}.log")
        except RuntimeError as exc:
            if name == "mainsail":
                raise
            peers[name] = f"did not serve: {exc}"
    out = {n: (u, psutil.Process(p.pid)) for n, (u, p) in routers.items() if not peers.get(n)}
    return backends, out


def _cpu_s(proc: psutil.Process) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--requests", type=int, default=1000, help="Sequential, per client (p99 needs many)."
    )
    parser.add_argument("--concurrent-requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", type=int, default=2)
    parser.add_argument("--token-delay", type=float, default=0.0, help="Fake engine, seconds.")
    parser.add_argument("--libs", default=",".join(LIBS))
    parser.add_argument("--peer-policy", default="", help="e.g. round_robin; default: theirs.")
    parser.add_argument("--peers-dir", type=Path, default=Path.home() / ".cache/mainsail/peers")
    args = parser.parse_args()
    libs = args.libs.split(",")
    peers = ensure_peers(args.peers_dir)
    procs = Procs(Path(tempfile.mkdtemp(prefix="mainsail-peers-")))
    # runs[repeat][target][lib]; cpu[target] router CPU seconds; sent[target] requests.
    runs: list[dict[str, dict[str, dict[str, float]]]] = []
    cpu: dict[str, float] = {}
    sent: dict[str, int] = {}
    share: dict[str, float] = {}
    try:
        backends, routers = start_all(args, procs, peers)
        targets = ["direct", *routers]
        per_target = len(libs) * (10 + args.requests + args.concurrent_requests)
        for rep in range(args.repeats):
            run: dict[str, dict[str, dict[str, float]]] = {}
            order = targets[rep % len(targets) :] + targets[: rep % len(targets)]
            for target in order:
                bases = backends if target == "direct" else [routers[target][0]]
                before = _backend_totals(backends)
                cpu0 = _cpu_s(routers[target][1]) if target in routers else 0.0
                run[target] = {lib: asyncio.run(measure(lib, bases, args)) for lib in libs}
                if target in routers:
                    cpu[target] = cpu.get(target, 0.0) + _cpu_s(routers[target][1]) - cpu0
                    sent[target] = sent.get(target, 0) + per_target
                    got = [a - b for a, b in zip(_backend_totals(backends), before, strict=True)]
                    share[target] = max(got) / max(1, sum(got))
            runs.append(run)
    finally:
        procs.stop()

    def med(target: str, lib: str, key: str) -> float:
        return statistics.median(r[target][lib][key] for r in runs)

    def added(target: str, lib: str, key: str) -> float:
        return statistics.median(r[target][lib][key] - r["direct"][lib][key] for r in runs)

    print(
        f"\nRouter overhead vs peers: {args.backends} fake backends, {MAX_TOKENS} streamed tokens "
        f"per request (token delay {args.token_delay:g} s), loopback, {os.cpu_count()} CPUs; "
        f"medians of {args.repeats} repeats; TTFT over {args.requests} sequential requests; "
        f"req/s with {args.clients} concurrent streams ({args.concurrent_requests} requests); "
        f"routers at their default policy{' ' + args.peer_policy if args.peer_policy else ''}.\n"
    )
    print(
        "| target | client | TTFT p50 ms | TTFT p99 ms | added p50 ms | added p99 ms "
        f"| req/s @{args.clients} | router CPU ms/req | busiest backend share |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for target in ["direct", *routers]:
        for lib in libs:
            is_router = target != "direct"
            add = (
                f"{added(target, lib, 'ttft_p50'):+.2f} | {added(target, lib, 'ttft_p99'):+.2f}"
                if is_router
                else "— | —"
            )
            cpu_ms = f"{1000 * cpu[target] / sent[target]:.2f}" if is_router else "—"
            sh = f"{share[target]:.0%}" if is_router else "—"
            print(
                f"| {target} | {lib} | {med(target, lib, 'ttft_p50'):.2f} | "
                f"{med(target, lib, 'ttft_p99'):.2f} | {add} | {med(target, lib, 'rps'):.0f} | "
                f"{cpu_ms} | {sh} |"
            )
    for name, why in peers.items():
        if why:
            print(f"\n{name} not measured: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
