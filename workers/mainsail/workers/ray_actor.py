"""Ray hosting of worker replicas: one async actor per replica.

The actor class is built lazily (`actor_class()`), so importing Mainsail never imports Ray.
Placement: each actor asks for `num_cpus` and, for GPU pools, `num_gpus`, plus one unit of its
pool's custom resource `mainsail-<role>` (`pool_resource`). The operator declares that resource
on the pool's KubeRay worker group and `mainsail up` on the local node, so a replica only ever
lands where its pool says.
"""

from __future__ import annotations

from typing import Any

from mainsail.workers.host import WorkerHost, WorkerSpec


def pool_resource(role: str) -> str:
    """The Ray custom resource that marks nodes of one role's pool."""
    return f"mainsail-{role}"


class WorkerActor:
    """Ray actor body: a thin shell around `WorkerHost` (async methods run on its loop)."""

    def __init__(self, spec_json: str) -> None:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
        self.host = WorkerHost(WorkerSpec.model_validate_json(spec_json))

    async def start(self) -> str:
        return await self.host.start()

    async def wait_registered(self, timeout: float = 60.0) -> None:
        await self.host.wait_registered(timeout)

    async def ping(self) -> str:
        return await self.host.ping()

    async def stop(self) -> None:
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
