"""`python -m mainsail.router --config router.json`: run one router process."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.ready_file import write_ready_file
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Stop when the launching process is gone, so a crashed `mainsail up` leaves no router."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    stop.set()


async def _serve(config: RouterConfig, ready_file: Path | None, parent_pid: int | None) -> None:
    server = RouterServer(config)
    await server.start()
    if not server.credentials.admin_enabled:
        logging.warning(
            "admin API disabled (403): no %s; /workers, drains and migrations need one",
            ADMIN_TOKEN_ENV,
        )
    # Everything loaded so far (tokenizer, protobuf descriptors, gRPC) lives as long as the
    # process; a full collection scanned it for ~35 ms, a TTFT outlier every few hundred
    # requests. Frozen objects are skipped by every later collection.
    gc.collect()
    gc.freeze()
    if ready_file is not None:
        ports = {
            "http_port": server.http_port,
            "grpc_port": server.grpc_port,
            "fleet_port": server.fleet_port,
        }
        write_ready_file(ready_file, ports)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(_watch_parent(parent_pid, stop)) if parent_pid else None
    await stop.wait()
    if watcher is not None:
        watcher.cancel()
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="mainsail-router", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="RouterConfig as JSON.")
    parser.add_argument("--ready-file", type=Path, help="Write bound ports here once serving.")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--parent-pid", type=int, help="Exit when this parent process is gone.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s router %(message)s")
    try:
        config = RouterConfig.model_validate_json(args.config.read_text())
    except (OSError, ValueError) as exc:
        print(f"mainsail-router: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config, args.ready_file, args.parent_pid))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (the `router` extra): its loop and transports cost the router
    less CPU per request than asyncio's own; asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
