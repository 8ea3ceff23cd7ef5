"""`mainsail up`: one `ModelDeployment` realized on this machine.

The same spec the operator turns into a RayCluster, a router Deployment and a Redis
StatefulSet becomes, locally: a Redis-compatible server (or `--redis-url`), a local Ray with
one async actor per worker replica, kept alive by the same `WorkerSupervisor` a cluster's Ray
head runs (a crashed worker is replaced and registers again), and one router process per
router replica (`--routers N`, default `spec.router.replicas`; consecutive ports, see
`ports.py`), with every worker registered with every router (active-active). Startup
is ordered so that each step can fail with a clear message; shutdown reverses it and leaves no
process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mainsail.cli.local.ports import RouterPorts, check_router_ports, replica_ports, router_ports
from mainsail.cli.local.ray_start import Progress, start_local_ray
from mainsail.cli.local.redis_server import RedisServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.deployment import ModelDeployment
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.ready_file import write_atomic, write_ready_file
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV, LOCAL_ADMIN_TOKEN_FILE
from mainsail.spec.worker_auth import WORKER_TOKEN_ENV, generate_token
from mainsail.workers.ray_actor import pool_resource
from mainsail.workers.supervisor import WorkerSupervisor
from mainsail.workers.worker_spec import WorkerSpec


def check_sharding(model_dir: Path, engine: EngineSettings) -> None:
    """Refuse, before any worker starts, a tensor/expert-parallel degree the checkpoint
    cannot be split by (`ShardingError` names the numbers)."""
    from mainsail.workers.models import load_model_config
    from mainsail.workers.parallel.plan import check_expert_parallel, check_tensor_parallel
    from mainsail.workers.parallel.shard_model import model_shape

    shape = model_shape(load_model_config(model_dir))
    check_tensor_parallel(shape, engine.tensor_parallel)
    if engine.expert_parallel is not None:
        check_expert_parallel(shape, engine.expert_parallel.max)


@dataclass
class StackOptions:
    """Command-line choices that override or complete the deployment for a local run."""

    host: str = "127.0.0.1"
    http_port: int | None = None  # None: the spec's router.httpPort; 0: any free port
    grpc_port: int | None = None  # None: the spec's router.grpcPort; 0: any free port
    redis_url: str | None = None
    replicas: int | None = None
    routers: int | None = None  # None: the spec's router.replicas
    model_cache: Path | None = None
    ready_file: Path | None = None
    startup_timeout: float = 300.0
    autoscale_seconds: float = 5.0  # between expert-parallel autoscaler rounds


@dataclass
class RouterProcess:
    """One router replica: its process and the ports it bound."""

    proc: subprocess.Popen[bytes]
    log: Path
    ready: Path
    http_port: int = 0
    grpc_port: int = 0
    fleet_port: int = 0


@dataclass
class LocalStack:
    """The processes of one local deployment; `stop()` is safe to call at any point."""

    deployment: ModelDeployment
    options: StackOptions
    progress: Progress
    model_dir: Path | None = None
    redis: RedisServer | None = None
    redis_url: str | None = None
    router_proc: subprocess.Popen[bytes] | None = None  # the first replica's
    routers: list[RouterProcess] = field(default_factory=list)
    http_port: int = 0
    grpc_port: int = 0
    fleet_port: int = 0
    supervisor: WorkerSupervisor | None = None
    ray_started: bool = False
    ray_address: str | None = None  # the local Ray's GCS, for tools that join it (tests)
    _supervisor_thread: threading.Thread | None = None
    _supervisor_stop: threading.Event | None = None
    _experts: tuple[threading.Thread, threading.Event] | None = None
    _workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mainsail-up-")))

    # ---------------------------------------------------------------- start

    def start(self) -> None:
        """Bring every part up, in order; raises with a message naming the step that failed."""
        opts = self.options
        for ports in self._replica_ports():
            check_router_ports(opts.host, ports)  # before anything starts
        # The worker plane's credential: the router and every worker inherit it from this
        # process's environment (the router process and the local Ray), so the Registry and
        # the workers' API refuse anyone else on this machine. Kept if the user set one.
        if not os.environ.get(WORKER_TOKEN_ENV):
            os.environ[WORKER_TOKEN_ENV] = generate_token()
        # The admin API (drain, expert parallelism, migration) decides who serves what: the
        # routers inherit a token generated for this run (kept if the user set one), this
        # process's tools send it, and the user reads it from a 0600 file (docs/security.md).
        if not os.environ.get(ADMIN_TOKEN_ENV, "").strip():
            os.environ[ADMIN_TOKEN_ENV] = generate_token()
        write_atomic(self.admin_token_file, os.environ[ADMIN_TOKEN_ENV].strip() + "\n")
        self._prepare_model()
        self._start_redis()
        self._start_router()
        self._start_ray()
        self._start_workers()
        self._start_expert_autoscaler()
        if self.options.ready_file is not None:
            write_ready_file(self.options.ready_file, self.endpoints())

    def _prepare_model(self) -> None:
        source = self.deployment.spec.model
        if source.generate is not None:
            self.progress(f"Preparing {source.size} {source.generate} checkpoint")
            from mainsail.workers.checkpoint import ensure_checkpoint

            self.model_dir = ensure_checkpoint(
                source.generate,
                cache_dir=self.options.model_cache,
                seed=source.seed,
                size=source.size,
            )
        else:
            self.model_dir = Path(source.path or "")
            if not (self.model_dir / "config.json").is_file():
                raise FileNotFoundError(f"spec.model.path: no config.json in {self.model_dir}")

    def _start_redis(self) -> None:
        cache = self.deployment.spec.pools.cache
        if not cache.enabled:
            return
        if self.options.redis_url or cache.external_url:
            self.redis_url = self.options.redis_url or cache.external_url
            self.progress(f"Using Redis at {self.redis_url}")
            return
        self.progress("Starting embedded Redis-compatible server (valkey)")
        self.redis = RedisServer(maxmemory=cache.max_memory).start()
        self.redis_url = self.redis.url

    def _router_count(self) -> int:
        routers = self.options.routers
        return self.deployment.spec.router.replicas if routers is None else routers

    def _replica_ports(self) -> list[RouterPorts]:
        opts = self.options
        ports = router_ports(self.deployment, opts.http_port, opts.grpc_port)
        return replica_ports(ports, self._router_count())

    def _start_router(self) -> None:
        replicas = self._replica_ports()
        self.progress(
            "Starting router" if len(replicas) == 1 else f"Starting {len(replicas)} routers"
        )
        for index, ports in enumerate(replicas):  # all at once; then wait for each
            self.routers.append(self._spawn_router(index, ports))
        deadline = time.monotonic() + 60
        for router in self.routers:
            while not router.ready.exists():
                if router.proc.poll() is not None:
                    raise RuntimeError(f"router exited:\n{router.log.read_text()}")
                if time.monotonic() > deadline:
                    raise TimeoutError("router did not start within 60 s")
                time.sleep(0.05)
            ports = json.loads(router.ready.read_text())
            router.http_port, router.grpc_port = ports["http_port"], ports["grpc_port"]
            router.fleet_port = ports["fleet_port"]
        first = self.routers[0]
        self.router_proc = first.proc
        self.http_port, self.grpc_port, self.fleet_port = (
            first.http_port,
            first.grpc_port,
            first.fleet_port,
        )

    def _spawn_router(self, index: int, ports: RouterPorts) -> RouterProcess:
        assert self.model_dir is not None
        config = RouterConfig.from_deployment(
            self.deployment,
            self.model_dir,
            host=self.options.host,
            http_port=ports.http,
            grpc_port=ports.grpc,
            # Workers register on loopback, whatever --host says for clients; a free port
            # (several stacks may run side by side). The token guards it; TLS only when the
            # user set MAINSAIL_WORKER_TLS_DIR (then router and workers both use it).
            fleet_host="127.0.0.1",
            fleet_port=0,
        )
        suffix = "" if index == 0 else f"-{index}"
        config_path = self._workdir / f"router{suffix}.json"
        config_path.write_text(config.model_dump_json())
        ready = self._workdir / f"router{suffix}.ready"
        log_path = self._workdir / f"router{suffix}.log"
        log = log_path.open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mainsail.router",
                "--config",
                str(config_path),
                "--ready-file",
                str(ready),
                "--log-level",
                "WARNING",
                "--parent-pid",
                str(os.getpid()),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return RouterProcess(proc, log_path, ready)

    def _start_ray(self) -> None:
        self.progress("Starting local Ray")
        total = self._total_replicas()
        # Ray installs a SIGTERM handler that kills the process before our cleanup runs;
        # keep ours so SIGTERM shuts the whole stack down in order.
        previous = signal.getsignal(signal.SIGTERM)
        # One custom resource per role, as the operator gives each KubeRay worker group
        # (`mainsail-<role>`), so actors land where their pool says, locally and on a cluster.
        roles = {
            pool_resource(role): float(self._replicas(pool.replicas))
            for role, pool in self._pools().items()
        }
        # A sharded worker's rank actors each take one CPU bundle of its placement group.
        ranks = self.deployment.spec.engine.ranks if self.deployment.spec.engine.sharded else 0
        start_local_ray(
            max(1, total) + total * ranks,
            resources=roles,
            namespace=self._ray_namespace,
            progress=self.progress,
        )
        self.ray_started = True
        import ray

        self.ray_address = ray.get_runtime_context().gcs_address
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)

    def _pools(self) -> dict[str, Any]:
        return self.deployment.spec.pools.worker_pools()

    def _replicas(self, replicas: int) -> int:
        return self.options.replicas if self.options.replicas is not None else replicas

    def _start_workers(self) -> None:
        """The same supervisor a cluster's Ray head runs: one actor per unit of each pool's
        Ray resource, replaced (and re-registered) when it dies, until `stop`."""

        assert self.model_dir is not None
        spec = self.deployment.spec
        fleet = [f"127.0.0.1:{r.fleet_port}" for r in self.routers]
        model_dir = self.model_dir
        # Adapters whose `path` is not on this machine are skipped (the rest are served);
        # `generateRank` adapters are generated for the local checkpoint by each worker.
        adapters = tuple(a for a in spec.adapters if a.path is None or Path(a.path).is_dir())
        for skipped in sorted({a.name for a in spec.adapters} - {a.name for a in adapters}):
            self.progress(f"Adapter {skipped}: path not found on this machine; not served")
        if spec.engine.sharded:
            check_sharding(model_dir, spec.engine)
        name = self.deployment.metadata.name

        def make_spec(role: str, index: int) -> WorkerSpec:
            return WorkerSpec(
                worker_id=f"{name}-{role}-{index}",
                role=role,
                model_name=spec.model.name,
                model_dir=model_dir,
                engine=spec.engine,
                router_address=fleet[0],
                router_addresses=tuple(fleet[1:]),
                host=self.options.host,
                adapters=adapters,
                redis_url=self.redis_url,
                tracing=spec.tracing,
            )

        # Detached, as on a cluster: Ray scopes a placement group to its creator only when the
        # creator is detached (else to this driver), so a sharded worker that dies (a rank lost,
        # a kill) would otherwise leave its rank bundles reserved until `mainsail up` ends, and
        # its replacement would wait for room forever. `stop` kills them; `ray.shutdown` too.
        self.supervisor = WorkerSupervisor(name, list(self._pools()), make_spec, detached=True)
        self.progress(f"Starting workers ({self._total_replicas()})")
        self.supervisor.wait_ready(self.options.startup_timeout, self.progress)
        self._supervisor_thread, self._supervisor_stop = self.supervisor.start_background()

    def _start_expert_autoscaler(self) -> None:
        """With ``engine.expertParallel`` set, the operator's expert-parallel round every
        ``autoscale_seconds`` against this stack's routers (`expert_autoscale`)."""
        spec = self.deployment.spec
        if spec.engine.expert_parallel is None:
            return
        from mainsail.cli.local.expert_autoscale import LocalExpertScaler
        from mainsail.operator.expert_signals import HttpExpertRouter

        host = self._dial_host()
        scaler = LocalExpertScaler(
            spec,
            [f"http://{host}:{r.http_port}/metrics" for r in self.routers],
            f"http://{host}:{self.http_port}",
            self.status_file,
            HttpExpertRouter(timeout_seconds=30),
            interval=self.options.autoscale_seconds,
            say=lambda line: print(f"mainsail up: {line}", file=sys.stderr, flush=True),
        )
        ep = spec.engine.expert_parallel
        self.progress(
            f"Expert-parallel autoscaler: ep {ep.min}..{ep.max}, "
            f"every {self.options.autoscale_seconds:g} s"
        )
        self._experts = scaler.start_background()

    @property
    def admin_token_file(self) -> Path:
        """The routers' admin token for this run (mode 0600; `mainsail status` reads it)."""
        return self._workdir / LOCAL_ADMIN_TOKEN_FILE

    @property
    def status_file(self) -> Path:
        """Where the expert-parallel autoscaler writes its status (`mainsail status`)."""
        return self._workdir / "status.json"

    @property
    def _ray_namespace(self) -> str:
        return f"mainsail-{self.deployment.metadata.name}"

    def _dial_host(self) -> str:
        """The address this process reaches its own routers at (loopback for a wildcard)."""
        host = self.options.host
        return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host

    def _total_replicas(self) -> int:
        return sum(self._replicas(p.replicas) for p in self._pools().values())

    # ---------------------------------------------------------------- report

    def endpoints(self) -> dict[str, Any]:
        """Where clients and tools reach this stack."""
        host = self.options.host
        return {
            "model": self.deployment.spec.model.name,
            "http": f"http://{host}:{self.http_port}",
            "openai_base_url": f"http://{host}:{self.http_port}/v1",
            "grpc": f"{host}:{self.grpc_port}",
            "fleet": f"127.0.0.1:{self.fleet_port}",
            "metrics": f"http://{host}:{self.http_port}/metrics",
            "redis": self.redis_url,
            "workers": self._total_replicas(),
            "model_dir": str(self.model_dir),
            "router_log": str(self._workdir / "router.log"),
            "admin_token": os.environ.get(ADMIN_TOKEN_ENV, "").strip(),
            "admin_token_file": str(self.admin_token_file),
            # Ray's own address and the namespace of the worker actors (named as the workers
            # they host): a tool joining it can ask a worker about its rank actors.
            "ray_address": self.ray_address,
            "ray_namespace": self._ray_namespace,
            "status_file": (
                str(self.status_file) if self.deployment.spec.engine.expert_parallel else None
            ),
            "routers": [
                {
                    "http": f"http://{host}:{r.http_port}",
                    "openai_base_url": f"http://{host}:{r.http_port}/v1",
                    "grpc": f"{host}:{r.grpc_port}",
                    "fleet": f"127.0.0.1:{r.fleet_port}",
                    "metrics": f"http://{host}:{r.http_port}/metrics",
                    "pid": r.proc.pid,
                    "log": str(r.log),
                }
                for r in self.routers
            ],
        }

    # ---------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop the autoscaler, workers, Ray, the router and Redis; never raises."""
        if self._experts is not None:
            thread, stop = self._experts
            stop.set()
            thread.join(timeout=40)
        if self._supervisor_stop is not None and self._supervisor_thread is not None:
            self._supervisor_stop.set()
            self._supervisor_thread.join(timeout=30)
        if self.ray_started:
            import ray

            if self.supervisor is not None:
                # Shutting down regardless of how each actor answers.
                with contextlib.suppress(Exception):
                    self.supervisor.stop_all()
            ray.shutdown()
            self.ray_started = False
        running = [r.proc for r in self.routers if r.proc.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.redis is not None:
            self.redis.stop()
