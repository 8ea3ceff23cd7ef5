"""The live goodput benchmark's stack: one real router per routing policy and real-engine
workers registered with every router (`bench/live_goodput.py`), so all policies share the same
workers and the same moment's machine load.

Why its own module: the driver (`live_goodput.py`) slices traces, calibrates SLOs and paces
replays; what runs underneath (engine limits, SLO classes, the admission set-up the `ttft`
scorer reads, process start and registration) is one noun of its own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mainsail.router.settings import RouterConfig
from mainsail.sim.cost import load_profile
from mainsail.sim.goodput import live_profiles
from mainsail.sim.live_processes import LiveProcesses
from mainsail.spec.admission import Admission
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.routing_profile import RoutingProfile
from mainsail.spec.slo import SLO, RequestTargetBounds, SLOClass
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.worker_spec import WorkerSpec

MODEL = "goodput"
CLASSES = [SLOClass(name="interactive", priority=10), SLOClass(name="batch", priority=0)]


class Stack:
    """One router per policy and ``workers`` real-engine workers registered with all."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.processes = LiveProcesses(tmp)
        self.http: dict[str, str] = {}
        self.engine = EngineSettings(
            block_size=16,
            max_model_len=args.tokens_per_block * args.max_blocks + args.max_output + 64,
            max_num_seqs=32,
            max_batched_tokens=256,
            num_kv_blocks=args.kv_blocks,
        )

    def start(self, labels: Sequence[str], extra: dict[str, RoutingProfile]) -> None:
        model_dir = ensure_checkpoint("llama", size=self.args.model_size)
        profiles = {**live_profiles(), **extra}
        # Targets come per request (headers); let them be as tight as the tiny model needs.
        slo = SLO(
            classes=CLASSES, request_bounds=RequestTargetBounds(min_ttft_ms=1, min_tpot_ms=0.1)
        )
        admission = Admission()
        if self.args.step_cost:
            # The `ttft` scorer replays this model; refusal stays out of the comparison
            # (headroom 100: no request here is predicted at 100x its target).
            cost = load_profile(self.args.step_cost).step_cost()
            limits = {
                "max_num_seqs": self.engine.max_num_seqs,
                "max_batched_tokens": self.engine.max_batched_tokens,
            }
            admission = Admission(step_cost=cost.model_copy(update=limits), headroom=100)
        fleet: list[str] = []
        for i, label in enumerate(labels):
            config = RouterConfig(
                admission=admission,
                model_name=MODEL,
                model_dir=model_dir,
                max_model_len=self.engine.max_model_len,
                kv_hash=self.engine.kv_hash(),
                profile=profiles[label],
                slo=slo,
                http_port=0,
                grpc_port=0,
                fleet_port=0,
            )
            _, ports = self.processes.start_router(f"router{i}", config, log_level="WARNING")
            self.http[label] = ports.http
            fleet.append(ports.fleet)
        for k in range(self.args.workers):
            spec = WorkerSpec(
                worker_id=f"w{k}",
                model_name=MODEL,
                model_dir=model_dir,
                engine=self.engine,
                router_address=fleet[0],
                router_addresses=tuple(fleet[1:]),
                metrics_port=None,
                torch_threads=1,
            )
            self.processes.start_worker(f"worker{k}", spec)
        self.processes.wait_registered(self.http.values(), self.args.workers, timeout=300)

    def stop(self) -> None:
        self.processes.stop()
