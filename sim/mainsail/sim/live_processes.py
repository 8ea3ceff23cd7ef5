"""The processes of a live run on loopback: router processes (`python -m mainsail.router`) and
worker processes (`python -m mainsail.workers`), each logging to its own file, stopped together.

Why one harness: the live benchmarks (`bench/live_goodput.py`, `bench/router_fleet.py`, …)
each started routers the same way — write the `RouterConfig` JSON, start the process with a
ready file, wait for the file while watching the process, read the bound ports — and each
carried its own copy of it. The simulator's live replay (`mainsail.sim.live`) is the client of
such a stack, so its harness sits beside it. Workers start from their spec's JSON (any pydantic
model: `WorkerSpec`), because the simulator may not import the workers package.

The processes of one run share one worker token (`MAINSAIL_WORKER_TOKEN`): the environment's,
else one generated for the run, since a router or worker without one serves no one on the
worker plane (`mainsail.spec.worker_auth`).

Everything is bounded: each start and wait has a timeout, and a process that exits while it is
awaited ends the wait at once with the tail of its log.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel

from mainsail.router.settings import RouterConfig
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV

LOG_TAIL_CHARS = 1500
"""How much of a failed process's log an error carries."""


@dataclass(frozen=True)
class RouterPorts:
    """Where a started router listens (ports it bound, from its ready file), on loopback."""

    http_port: int
    grpc_port: int
    fleet_port: int

    @property
    def http(self) -> str:
        """Base URL of the OpenAI front."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        """Address of the gRPC front."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def fleet(self) -> str:
        """Address workers register at."""
        return f"127.0.0.1:{self.fleet_port}"


class LiveProcesses:
    """Processes started for one live run, logs and files under ``tmp``.

    ``env`` (default: this process's environment, as it is when a process starts) is every
    process's environment, plus `worker_token` when it has no `MAINSAIL_WORKER_TOKEN`. Each
    process runs in its own session, so a terminal's Ctrl-C reaches only the run itself, which
    then calls `stop`.
    """

    def __init__(self, tmp: Path, env: Mapping[str, str] | None = None) -> None:
        self.tmp = tmp
        self.env = dict(env) if env is not None else None
        self.worker_token = secrets.token_hex(32)  # the run's, unless the environment has one
        self.procs: list[subprocess.Popen[bytes]] = []

    def environment(self) -> dict[str, str]:
        """A process's environment, as of now (see the class)."""
        env = dict(self.env if self.env is not None else os.environ)
        if not env.get(WORKER_TOKEN_ENV, "").strip():
            env[WORKER_TOKEN_ENV] = self.worker_token
        return env

    def spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        """Start ``cmd``; its output goes to ``<tmp>/<name>.log``."""
        with self.log(name).open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def start_router(
        self,
        name: str,
        config: RouterConfig,
        *,
        log_level: str | None = None,
        timeout: float = 120.0,
    ) -> tuple[subprocess.Popen[bytes], RouterPorts]:
        """Start a router process with ``config`` and wait (at most ``timeout`` seconds) until
        it serves; `RuntimeError` with its log's tail if it exits or does not get there."""
        path = self.tmp / f"{name}.json"
        path.write_text(config.model_dump_json())
        ready = self.tmp / f"{name}.ready"
        ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "mainsail.router", "--config", str(path)]
        cmd += ["--ready-file", str(ready)]
        if log_level is not None:
            cmd += ["--log-level", log_level]
        proc = self.spawn(name, cmd)
        ports = self.wait_ready_file(name, ready, proc, timeout)
        return proc, RouterPorts(ports["http_port"], ports["grpc_port"], ports["fleet_port"])

    def start_worker(self, name: str, spec: BaseModel) -> subprocess.Popen[bytes]:
        """Start a worker process from its ``spec`` (a `WorkerSpec`); it registers with the
        routers the spec names on its own (see `wait_registered`)."""
        path = self.tmp / f"{name}.json"
        path.write_text(spec.model_dump_json())
        return self.spawn(name, [sys.executable, "-m", "mainsail.workers", "--spec", str(path)])

    def wait_ready_file(
        self, name: str, path: Path, proc: subprocess.Popen[bytes], timeout: float
    ) -> dict[str, int]:
        """The JSON ``proc`` writes to ``path`` once it serves (whole: it is written
        atomically, `mainsail.spec.ready_file`); `RuntimeError` if ``proc`` exits first or
        ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while True:
            if path.exists():
                data: dict[str, int] = json.loads(path.read_text())
                return data
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name}: not ready\n{self.tail(name)}")
            time.sleep(0.05)

    def wait_registered(self, bases: Iterable[str], workers: int, timeout: float) -> None:
        """Wait until every router at ``bases`` (HTTP base URLs) has ``workers`` registered;
        `RuntimeError` with the logs' tails if a process exits or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        for base in bases:
            while httpx.get(f"{base}/health", timeout=10).json().get("workers") != workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    logs = "\n".join(self.tail(log.stem, 800) for log in self.tmp.glob("*.log"))
                    raise RuntimeError(f"{base}: {workers} workers not registered\n{logs}")
                time.sleep(0.1)

    def tail(self, name: str, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of ``name``'s log ("" if it has none)."""
        log = self.log(name)
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate every process, then kill those still running after ``timeout`` seconds."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
