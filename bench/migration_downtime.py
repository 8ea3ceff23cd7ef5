"""Migration downtime: the pause a client sees when its stream moves to another worker, vs the
context length, moving the KV (`Worker.Migrate`) or recomputing it — both in the same run.

A real router (`RouterServer`) and two real workers (`WorkerHost`, the engine on the
generated tiny checkpoint) run in this process on loopback. For each context length, each
repeat streams one greedy request whose prompt is that many random tokens (a fresh prompt
every time, so no prefix cache helps the recompute) over the router's gRPC API; after
`--after` tokens it is moved to the other worker, alternately with its KV and by recompute.
The pause is the gap between the last token the client got from the first worker and the
first from the second. Prints the medians per length and mode, their ratio, and how much
each grows from the shortest to the longest context (KV-moving should stay flat).

The tiny checkpoint allows 4096 positions; longer contexts need a config that allows them:
this copies the checkpoint and raises `max_position_embeddings` to 16384 (RoPE works at any
position; the weights are the same, so only the config and the checkpoint digest differ).
Usage: `python bench/migration_downtime.py [--lengths 512,1024,2048,4096,8192] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.proto.v1 import mainsail_pb2_grpc as pb_grpc
from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

MAX_POSITIONS = 16384
WORKER = WorkerCredential(token=secrets.token_hex(32))  # the router's and the workers'


def long_context_checkpoint(out: Path) -> Path:
    """The tiny checkpoint with `max_position_embeddings` raised (see the module doc)."""
    src = ensure_checkpoint("llama")
    shutil.copytree(src, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    config["max_position_embeddings"] = MAX_POSITIONS
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


async def one_move(
    stub: pb_grpc.InferenceStub,
    server: RouterServer,
    length: int,
    kv: bool,
    after: int,
    tokens: int,
    rng: random.Random,
) -> tuple[float, float]:
    """Seconds between the last token from the first worker and the first from the second,
    and the median gap between two responses of one worker (the stream's normal pace)."""
    prompt = [rng.randrange(3, 500) for _ in range(length)]
    request = pb.GenerateRequest(
        model="tiny",
        prompt_token_ids=prompt,
        sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True),
    )
    first_worker = ""
    last_from_first = switched = 0.0
    seen = 0
    gaps: list[float] = []
    previous: tuple[str, float] | None = None
    async for response in stub.Generate(request, timeout=300):
        now = time.perf_counter()
        if previous is not None and previous[0] == response.worker_id:
            gaps.append(now - previous[1])
        previous = (response.worker_id, now)
        if not first_worker:
            first_worker = response.worker_id
        if response.worker_id == first_worker:
            last_from_first = now
        elif not switched:
            switched = now
        seen += len(response.token_ids)
        if seen >= after and seen - len(response.token_ids) < after:
            (target,) = {e.worker_id for e in server.registry.entries()} - {first_worker}
            if not await server.router.migrate(response.request_id, target, kv=kv):
                raise RuntimeError("the request was not streaming")
    if not switched:
        raise RuntimeError(f"the stream ({length} tokens of context) finished before the move")
    return switched - last_from_first, statistics.median(gaps)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--after", type=int, default=16, help="tokens before the move")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per request")
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    load_start = os.getloadavg()[0]
    max_len = max(lengths) + args.tokens + 16
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = long_context_checkpoint(Path(tmp) / "llama-long")
        engine = EngineSettings(max_model_len=max_len, max_num_seqs=4)
        config = RouterConfig(
            model_name="tiny",
            model_dir=model_dir,
            http_port=0,
            grpc_port=0,
            fleet_port=0,
            max_model_len=max_len,
        )
        server = RouterServer(config, worker_credential=WORKER)
        await server.start()
        hosts = [
            WorkerHost(
                WorkerSpec(
                    worker_id=f"w{i}",
                    model_name="tiny",
                    model_dir=model_dir,
                    engine=engine,
                    router_address=f"127.0.0.1:{server.fleet_port}",
                    metrics_port=None,
                ),
                WORKER,
            )
            for i in range(2)
        ]
        try:
            for host in hosts:
                await host.start()
                await host.wait_registered(60)
            pauses: dict[tuple[int, bool], list[float]] = {}
            paces: dict[int, list[float]] = {}
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = pb_grpc.InferenceStub(channel)
                await one_move(stub, server, 64, True, 4, 32, rng)  # warm-up (digest, caches)
                for _ in range(args.repeats):
                    for length in lengths:
                        for kv in (True, False):
                            pause, pace = await one_move(
                                stub, server, length, kv, args.after, args.tokens, rng
                            )
                            pauses.setdefault((length, kv), []).append(pause)
                            paces.setdefault(length, []).append(pace)
        finally:
            for host in hosts:
                await host.stop()
            await server.stop()
    print(f"load average (1 min) at start {load_start:.1f}, at end {os.getloadavg()[0]:.1f}")
    print(f"pause seen by the client, medians of {args.repeats} (ms); token gap = the stream's")
    print("normal gap between two tokens at that context (median); stall = KV pause - gap")
    print(f"{'context':>8} {'gap':>7} {'KV move':>8} {'stall':>7} {'recompute':>10} {'ratio':>7}")
    med = {key: statistics.median(v) * 1000 for key, v in pauses.items()}
    gap = {length: statistics.median(v) * 1000 for length, v in paces.items()}
    for length in lengths:
        kv_ms, re_ms = med[(length, True)], med[(length, False)]
        print(
            f"{length:>8} {gap[length]:>7.1f} {kv_ms:>8.1f} {kv_ms - gap[length]:>7.1f} "
            f"{re_ms:>10.1f} {re_ms / kv_ms:>7.1f}"
        )
    lo, hi = lengths[0], lengths[-1]
    print(
        f"growth {lo} -> {hi} tokens: KV move x{med[(hi, True)] / med[(lo, True)]:.2f}, "
        f"recompute x{med[(hi, False)] / med[(lo, False)]:.2f}, token gap "
        f"x{gap[hi] / gap[lo]:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
