"""`python -m mainsail.workers --spec spec.json`: one worker replica as a plain process.

Ray actors are the normal host (`ray_actor.py`); this entry serves benchmarks and debugging,
where a worker outside Ray is handy.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec


async def _serve(spec: WorkerSpec) -> None:
    host = WorkerHost(spec)
    await host.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await host.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="mainsail-worker", description=__doc__)
    parser.add_argument("--spec", type=Path, required=True, help="WorkerSpec as JSON.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(message)s")
    try:
        spec = WorkerSpec.model_validate_json(args.spec.read_text())
    except (OSError, ValueError) as exc:
        print(f"mainsail-worker: bad spec {args.spec}: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
