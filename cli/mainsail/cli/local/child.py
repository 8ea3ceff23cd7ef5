"""`mainsail up` as a child process: how tests, benchmarks and scripts drive a whole stack.

Starts the command in its own session (so a stuck stack can be killed as a group), waits for
its ready file, returns the endpoints it printed there, and on `stop()` sends SIGTERM — the
signal users send — and reports the exit code and any descendant process still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil


class UpProcess:
    """One `mainsail up` child; use as a context manager or call start()/stop()."""

    def __init__(self, workdir: Path, args: list[str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.args = list(args or [])
        self.ready = self.workdir / "ready.json"
        self.log = self.workdir / "up.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> dict[str, Any]:
        """Launch and wait for the ready file; raises RuntimeError with the log's tail."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        command = [
            sys.executable,
            "-m",
            "mainsail.cli.main",
            "up",
            *self.args,
            "--ready-file",
            str(self.ready),
            "--quiet",
        ]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        try:
            while not self.ready.exists():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mainsail up did not start:\n{self.log_tail()}")
                time.sleep(0.2)
        except BaseException:
            # Also on KeyboardInterrupt: an interrupted caller must not leave the child's
            # whole stack (Ray, router, Redis) running behind it.
            self.kill()
            raise
        endpoints: dict[str, Any] = json.loads(self.ready.read_text())
        return endpoints

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 60.0) -> tuple[int | None, list[str]]:
        """SIGTERM, wait; returns (exit code or None if it had to be killed, leftovers)."""
        if self.proc is None:
            return None, []
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
            self.kill()
        _, alive = psutil.wait_procs(descendants, timeout=20)
        leftovers = [f"{p.pid} {p.name()}" for p in alive if p.is_running()]
        for p in alive:
            p.kill()
        return code, leftovers

    def kill(self) -> None:
        """SIGKILL the whole session of the child and every descendant of it (a router runs in
        a session of its own, so the process group alone missed it)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                descendants = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                descendants = []
            os.killpg(self.proc.pid, signal.SIGKILL)
            for child in descendants:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            self.proc.wait(10)

    def __enter__(self) -> UpProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
