"""Ray hosting of worker replicas: one async actor per replica.

The actor class is built lazily (`actor_class()`), so importing Mainsail never imports Ray.
Placement: each actor asks for `num_cpus` and, for GPU pools, `num_gpus`, plus one unit of its
pool's custom resource `mainsail-<role>` (`pool_resource`). The operator declares that resource
on the pool's KubeRay worker group and `mainsail up` on the local node, so a replica only ever
lands where its pool says. The actors are created and kept alive by `supervisor.py`.

On a cluster the supervisor cannot know which pod an actor will land on, so the actor fills in
what depends on its node (`for_node`): the worker id becomes the pod's name (KubeRay sets
`RAY_CLOUD_INSTANCE_ID` to it; the host name is the same in a pod), so the operator can map a
registered worker to the pod it drains and then deletes, and the advertised address becomes
the node's IP when the service binds all interfaces, and adapters whose `path` is not on this
node are left out (as `mainsail up` leaves out those not on the laptop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mainsail.workers.worker_spec import WorkerSpec

log = logging.getLogger(__name__)

POD_NAME_ENV = "RAY_CLOUD_INSTANCE_ID"
NODE_ID_PLACEHOLDER = "{node}"
"""A `WorkerSpec.worker_id` of exactly this is replaced by the node's (pod's) name."""


def for_node(
    spec: WorkerSpec,
    environ: Mapping[str, str] | None = None,
    hostname: Callable[[], str] = socket.gethostname,
    node_ip: Callable[[], str] | None = None,
) -> WorkerSpec:
    """``spec`` with node-dependent fields filled in (see the module docstring)."""
    env = os.environ if environ is None else environ
    update: dict[str, Any] = {}
    if spec.worker_id == NODE_ID_PLACEHOLDER:
        update["worker_id"] = env.get(POD_NAME_ENV) or hostname()
    present = tuple(a for a in spec.adapters if a.path is None or Path(a.path).is_dir())
    if present != spec.adapters:
        missing = sorted({a.name for a in spec.adapters} - {a.name for a in present})
        log.warning("adapters %s: path not found on this node; not served", missing)
        update["adapters"] = present
    if spec.host in ("0.0.0.0", "::") and spec.advertise_host is None:
        if node_ip is None:
            import ray

            node_ip = ray.util.get_node_ip_address
        update["advertise_host"] = node_ip()
    return spec.model_copy(update=update) if update else spec


def _die(exc: BaseException) -> None:
    """A worker whose engine cannot continue ends its process: the router sees a dead worker
    and moves its requests, and the supervisor starts a replacement."""
    log.critical("worker ending: %s", exc)
    logging.shutdown()
    os._exit(70)


def pool_resource(role: str) -> str:
    """The Ray custom resource that marks nodes of one role's pool."""
    return f"mainsail-{role}"


class WorkerActor:
    """Ray actor body: a thin shell around `WorkerHost` (async methods run on its loop)."""

    def __init__(self, spec_json: str) -> None:
        # Imported here, in the actor's process: the supervisor that only creates actors (and
        # whatever imports it) never loads torch and the engine.
        from mainsail.workers.host import WorkerHost

        logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
        self.host = WorkerHost(for_node(WorkerSpec.model_validate_json(spec_json)), on_fatal=_die)
        self._stopped: asyncio.Event | None = None

    async def start(self) -> str:
        return await self.host.start()

    async def worker_id(self) -> str:
        return self.host.spec.worker_id

    async def pid(self) -> int:
        """The actor's process id (tests kill a worker by it)."""
        return os.getpid()

    async def rank_pids(self) -> dict[str, list[int]]:
        """This worker's rank actors' process ids, as Ray reports them (`WorkerHost.rank_pids`);
        tests kill one rank by it."""
        return await self.host.rank_pids()

    async def watch(self) -> None:
        """Returns when `stop` was called; the supervisor's call fails when the actor dies."""
        if self._stopped is None:
            self._stopped = asyncio.Event()
        await self._stopped.wait()

    async def wait_registered(self, timeout: float = 60.0) -> None:
        await self.host.wait_registered(timeout)

    async def ping(self) -> str:
        return await self.host.ping()

    async def stop(self) -> None:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        self._stopped.set()
        await self.host.stop()


def actor_class(
    num_cpus: float = 1.0, num_gpus: float = 0.0, resources: dict[str, float] | None = None
) -> Any:
    """The Ray remote class for worker replicas with these placement options."""
    import ray

    options: dict[str, Any] = {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "resources": resources or {},
        "max_concurrency": 1000,
    }
    return ray.remote(**options)(WorkerActor)
