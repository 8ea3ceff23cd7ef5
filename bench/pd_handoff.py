"""Disaggregated prefill/decode: what the KV hand-off through Redis saves on the decode side.

One process: a real router (`RouterServer`, disaggregated), a real prefill worker and a real
decode worker (`WorkerHost`, engines on their own threads), a real Redis (valkey). Requests go
one at a time, each with a fresh prompt, so the decode worker never holds it locally. Per
prompt length, the **hand-off gap** — time from the first token (prefill worker) to the second
(decode worker, which first has to get the prompt's KV) — is measured twice in the same run:

* ``fetch``: the decode worker fetches the published blocks from Redis (the design);
* ``recompute``: the same set-up with a decode worker that has no tier, so it recomputes.

Prints medians and the ratio fetch / recompute. CPU, `small` generated model by default; on a
GPU the prefill side gets far cheaper per token while the blocks get larger, so read the ratio
as this machine's, not a promise.

    .venv/bin/python bench/pd_handoff.py [--lengths 256 512 1024 1900] [--requests 5]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time
from pathlib import Path

import torch

from mainsail.cli.local.redis_server import RedisServer
from mainsail.proto.v1 import mainsail_pb2 as pb
from mainsail.router.server import RouterServer
from mainsail.router.settings import RouterConfig
from mainsail.spec.engine_settings import EngineSettings
from mainsail.spec.worker_auth import WorkerCredential
from mainsail.workers.checkpoint.generator import ensure_checkpoint
from mainsail.workers.host import WorkerHost
from mainsail.workers.worker_spec import WorkerSpec

WORKER = WorkerCredential(token=secrets.token_hex(32))  # the router's and the workers'


async def measure(
    model_dir: Path, redis_url: str | None, lengths: list[int], requests: int, salt: int
) -> dict[int, list[tuple[float, float]]]:
    """Per length: (TTFT, hand-off gap) seconds of each request."""
    engine = EngineSettings(max_model_len=2048, max_batched_tokens=512)
    router = RouterServer(
        RouterConfig(
            model_name="m", model_dir=model_dir, http_port=0, grpc_port=0, fleet_port=0,
            max_model_len=2048,
            request_role="decode", disaggregated=True, kv_hash=engine.kv_hash(),
        ),
        worker_credential=WORKER,
    )  # fmt: skip
    hosts = []
    try:
        await router.start()
        for role in ("prefill", "decode"):
            host = WorkerHost(
                WorkerSpec(
                    worker_id=f"w-{role}", role=role, model_name="m", model_dir=model_dir,
                    engine=engine, router_address=f"127.0.0.1:{router.fleet_port}",
                    redis_url=redis_url,
                ),
                WORKER,
            )  # fmt: skip
            await host.start()
            await host.wait_registered(60)
            hosts.append(host)
        out: dict[int, list[tuple[float, float]]] = {}
        for length in lengths:
            for i in range(requests + 1):  # the first is a warm-up
                gen = torch.Generator().manual_seed(salt * 100_003 + length * 101 + i)
                prompt = torch.randint(3, 500, (length,), generator=gen).tolist()
                request = pb.GenerateRequest(
                    model="m",
                    prompt_token_ids=prompt,
                    sampling=pb.SamplingParams(max_tokens=4, temperature=0, ignore_eos=True),
                )
                t0 = time.perf_counter()
                stamps = []
                async for response in router.router.generate(request):
                    stamps += [time.perf_counter() - t0] * len(response.token_ids)
                if i:
                    out.setdefault(length, []).append((stamps[0], stamps[1] - stamps[0]))
        return out
    finally:
        for host in hosts:
            await host.stop()
        await router.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 1900])
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--size", choices=["tiny", "small"], default="small")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model_dir = ensure_checkpoint("llama", size=args.size)
    redis = RedisServer(maxmemory="512mb").start()
    try:
        fetch = asyncio.run(measure(model_dir, redis.url, args.lengths, args.requests, 1))
        recompute = asyncio.run(measure(model_dir, None, args.lengths, args.requests, 2))
    finally:
        redis.stop()
    print(
        f"{args.size} model, CPU, 1 thread per engine; medians of {args.requests} requests "
        "per length (fresh prompts)"
    )
    print(
        "| prompt tokens | TTFT ms (prefill) | hand-off gap ms, fetch | recompute "
        "| fetch / recompute |"
    )
    print("|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        ttft = statistics.median(t for t, _ in fetch[length]) * 1000
        gap_f = statistics.median(g for _, g in fetch[length]) * 1000
        gap_r = statistics.median(g for _, g in recompute[length]) * 1000
        print(f"| {length} | {ttft:.1f} | {gap_f:.1f} | {gap_r:.1f} | {gap_f / gap_r:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
