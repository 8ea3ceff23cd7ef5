"""The worker supervisor on a RayCluster: `python -m mainsail.workers.cluster_supervisor`.

The operator starts it in the Ray head pod, in the same container as `ray start --head` (it
must share the head's file system to attach to the local Ray node), restarted by a shell loop
if it ever exits. It reads the deployment's configuration document (`MAINSAIL_CONFIG`, see
`mainsail.spec.config_document`) and runs `WorkerSupervisor` with detached actors: one worker
per `mainsail-<role>` unit the worker pods bring. Each worker generates (`spec.model.generate`,
deterministic, the same files the router's init container generates) or reads
(`spec.model.path`) the checkpoint on its own pod, binds all interfaces, advertises its pod IP,
takes its pod's name as worker id and registers with every router pod (the DNS records of the
headless `<deployment>-router-peers` Service, re-resolved as router pods come and go).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from mainsail.spec.config_document import CONFIG_ENV, DeploymentDocument
from mainsail.spec.worker_metrics import WORKER_METRICS_PORT
from mainsail.workers.checkpoint_location import checkpoint_dir
from mainsail.workers.ray_actor import NODE_ID_PLACEHOLDER
from mainsail.workers.supervisor import Placement, SpecFactory, WorkerSupervisor
from mainsail.workers.worker_spec import WorkerSpec

log = logging.getLogger("mainsail.supervisor")
CONNECT_TIMEOUT_S = 600.0


def model_dir(document: DeploymentDocument) -> Path:
    """Where each worker finds its checkpoint (a generated one: the default cache)."""
    source = document.spec.model
    if source.path is not None:
        return Path(source.path)
    assert source.generate is not None  # ModelSource: exactly one of path/generate
    return checkpoint_dir(source.generate, seed=source.seed, size=source.size)


def spec_factory(document: DeploymentDocument) -> SpecFactory:
    """``(role, index) -> WorkerSpec`` for this deployment's cluster workers."""
    spec = document.spec
    directory = model_dir(document)
    # Every cache-pool replica: the tier spreads blocks over them (kvtier/sharded.py).
    redis = ",".join(document.cache_urls) if document.cache_urls else None

    def make(role: str, index: int) -> WorkerSpec:
        return WorkerSpec(
            worker_id=NODE_ID_PLACEHOLDER,
            role=role,
            model_name=spec.model.name,
            model_dir=directory,
            generate=spec.model if spec.model.generate is not None else None,
            engine=spec.engine,
            router_address=document.router_address,
            router_dns=document.router_peers,
            host="0.0.0.0",
            metrics_port=WORKER_METRICS_PORT,  # one worker per pod: a fixed, scrapable port
            adapters=tuple(spec.adapters),
            redis_url=redis,
            tracing=spec.tracing,
        )

    return make


def placements(document: DeploymentDocument) -> dict[str, Placement]:
    """Ray options per role: no CPU reservation (the pod's resources are the budget; the
    `mainsail-<role>` unit places the actor), the pool's GPUs."""
    pools = document.spec.pools.worker_pools()
    # A sharded worker's GPUs belong to its rank actors (one each), not to the worker.
    sharded = document.spec.engine.sharded
    return {
        role: Placement(num_cpus=0, num_gpus=0 if sharded else pool.resources.gpus)
        for role, pool in pools.items()
    }


def connect(address: str | None, namespace: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """`ray.init` against the head, retried while `ray start --head` is still coming up."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        try:
            ray.init(
                address=address or "auto",
                namespace=namespace,
                log_to_driver=False,
                configure_logging=False,
            )
            return
        except (ConnectionError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for the Ray head: %s", exc)
            time.sleep(2.0)


def main(argv: list[str] | None = None) -> int:
    """Entry point; runs until SIGTERM."""
    parser = argparse.ArgumentParser(prog="mainsail-supervisor", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get(CONFIG_ENV, "/etc/mainsail/config.json")),
        help=f"The deployment's config.json (default: ${CONFIG_ENV}).",
    )
    parser.add_argument("--period", type=float, default=2.0, help="Seconds between passes.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(message)s")
    try:
        document = DeploymentDocument.model_validate_json(args.config.read_text())
    except (OSError, ValueError) as exc:
        print(f"mainsail-supervisor: cannot read {args.config}: {exc}", file=sys.stderr)
        return 2
    connect(os.environ.get("RAY_ADDRESS"), f"mainsail-{document.deployment}")
    supervisor = WorkerSupervisor(
        document.deployment,
        sorted(document.spec.pools.worker_pools()),
        spec_factory(document),
        placement=placements(document),
        detached=True,
    )
    adopted = supervisor.adopt()
    log.info("supervising %s (adopted %d running workers)", document.deployment, adopted)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Detached workers outlive this process on purpose: a restarted supervisor adopts them.
    supervisor.run(stop, period=args.period)
    return 0


if __name__ == "__main__":
    sys.exit(main())
