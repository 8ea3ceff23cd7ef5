"""Redis KV tier: block write/read throughput vs redis-benchmark, and TTFT fetch vs recompute.

Throughput, for three block sizes (16 tokens each: the tiny test model's 8 KiB block; a
1B-class block, 16 layers x 8 KV heads x 64 dims x 2 (K, V) x 2 bytes = 512 KiB; a 7B-class
block, 32 layers x 8 KV heads x 128 dims x 2 x 2 bytes = 2 MiB), on one server, in one run:

* tier write = the engine's write-through path: `BlockWriter.submit_rows` of one tensor of
  blocks per batch (as `TierLink.write_through` hands over a step's blocks), many batches
  back to back, then `flush` (pipelined SETs on the writer thread, two batches in flight,
  every reply checked);
* tier read = the engine's load path: `BlockLoader` (one pipelined EXISTS probe, pipelined
  GETs received into a staging tensor, headers checked), `fetch=always`;
* baseline = `redis-benchmark -c 1 -P <same pipeline> -d <same value size> -n <same blocks>`,
  SET with ``-r 1e9`` (fresh keys, like block writes), GET of one existing key; the exact
  command lines are printed and `redis_benchmark` says why each flag (Debian `redis-tools`:
  `apt-get install -y redis-tools`); when it is missing, a redis-py raw pipeline of
  pre-built values, labelled as such. The raw redis-py pipeline is printed
  in any case, to separate client overhead from the tier's own.

MB/s are medians over ``--repeats``; ratio = tier / baseline (target >= 0.70).

TTFT: a fresh engine serving a prompt whose KV another engine wrote to Redis, with
fetch=always vs fetch=never (recompute), on the tiny CPU model.

    .venv/bin/python bench/redis_tier.py [--repeats 5] [--server valkey|redis-server]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import redis
import torch

import mainsail.cli.local.redis_server as redis_server_module
from mainsail.cli.local.redis_server import RedisServer
from mainsail.workers.checkpoint import ensure_checkpoint
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams
from mainsail.workers.kvtier import (
    BlockCodec,
    BlockLoader,
    BlockWriter,
    FetchPolicy,
    RedisKVTier,
    RedisTierFactory,
)

MB = 1e6
LAYOUTS = {
    "tiny (2L x 2H x 16d, fp32)": (2, 16, 2, 16, torch.float32),
    "1B-class (16L x 8H x 64d, fp16)": (16, 16, 8, 64, torch.float16),
    "7B-class (32L x 8H x 128d, fp16)": (32, 16, 8, 128, torch.float16),
}
ONE = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / MB


class TierPaths:
    """The tier's write and read paths for one block layout, each run timed once per call."""

    def __init__(self, url: str, codec: BlockCodec, blocks: int, pipeline: int) -> None:
        self.tier = RedisKVTier.from_url(url, f"bench-{codec.layers}", timeout_s=30.0)
        self.codec, self.blocks, self.pipeline = codec, blocks, pipeline
        self.data = torch.randn((blocks, *codec.shape)).to(codec.dtype)
        self.value_bytes = len(codec.encode(self.data[0]))
        self.writer = BlockWriter(
            self.tier,
            codec,
            max_queue_blocks=blocks,
            max_batch_bytes=pipeline * codec.block_bytes(),
            remember_blocks=0,
        )
        self.loader = BlockLoader(self.tier, codec, "always")
        self._next = 0
        self._last: list[int] = []

    def write(self) -> float:
        """MB/s of `BlockWriter`: submit batches of tensor blocks, flush (all replies in)."""
        hashes = list(range(self._next, self._next + self.blocks))
        self._next += self.blocks
        t0 = time.perf_counter()
        for start in range(0, self.blocks, self.pipeline):  # one engine step's blocks at a time
            end = start + self.pipeline
            self.writer.submit_rows(hashes[start:end], self.data[start:end])
        if not self.writer.flush(300.0):
            raise RuntimeError("writer did not flush")
        seconds = time.perf_counter() - t0
        if self.writer.stats.dropped or self.tier.stats.errors:
            raise RuntimeError(f"write errors: {self.writer.stats} {self.tier.stats}")
        self._last = hashes
        return mbps(self.blocks * self.value_bytes, seconds)

    def read(self) -> float:
        """MB/s of `BlockLoader` (probe + pipelined GETs + decode) over the last written."""
        t0 = time.perf_counter()
        got = 0
        for start in range(0, self.blocks, self.pipeline):
            batch = self._last[start : start + self.pipeline]
            result = self.loader.submit(start, batch).result()
            got += len(result.hashes)
            self.loader.recycle(result)  # as the engine does once the blocks are in its cache
        seconds = time.perf_counter() - t0
        if got != self.blocks:
            raise RuntimeError(f"read {got} of {self.blocks} blocks")
        return mbps(self.blocks * self.value_bytes, seconds)

    def close(self) -> None:
        self.writer.close()
        self.loader.close()
        self.tier.client.flushdb()
        self.tier.client.close()


def raw_pipeline(client: redis.Redis, size: int, blocks: int, pipeline: int) -> tuple[float, float]:
    """redis-py SET then GET pipelines of pre-built ``size``-byte values (no tensors, no codec)."""
    value = bytes(size)
    rates = []
    for command in ("set", "get"):
        t0 = time.perf_counter()
        for start in range(0, blocks, pipeline):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(blocks, start + pipeline)):
                if command == "set":
                    pipe.set(f"raw:{i}", value)
                else:
                    pipe.get(f"raw:{i}")
            pipe.execute()
        rates.append(mbps(blocks * size, time.perf_counter() - t0))
    return rates[0], rates[1]


RB_KEYSPACE = 1_000_000_000  # -r: SETs go to fresh keys, as the engine's block writes do


def redis_benchmark_commands(port: int, size: int, blocks: int, pipeline: int) -> list[list[str]]:
    """The two redis-benchmark runs that mirror the tier's traffic (see `redis_benchmark`)."""
    binary = shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")
    assert binary is not None
    common = ["-h", "127.0.0.1", "-p", str(port), "-c", "1", "-P", str(pipeline)]
    common += ["-n", str(blocks), "-d", str(size), "--csv"]
    return [
        [binary, *common, "-r", str(RB_KEYSPACE), "-t", "set"],
        [binary, *common, "-t", "get"],
    ]


def redis_benchmark(
    client: redis.Redis, port: int, size: int, blocks: int, pipeline: int
) -> tuple[float, float]:
    """(SET, GET) MB/s from redis-benchmark with the tier's concurrency and batching.

    Flags and why: ``-c 1`` because the tier has one writer thread and one loader thread,
    each on one connection; ``-P <pipeline>`` because both send a batch of blocks per round
    trip (a step's blocks, up to the write queue's 256; a prompt's blocks); redis-benchmark
    waits for a batch's replies before sending the next, the writer does not (two batches
    in flight), which is part of why writes can beat it; ``-d`` the tier's value size;
    ``-n`` the blocks the tier moves. SET runs with ``-r 1e9`` so each SET creates a new
    key, as block writes do (without ``-r`` every SET overwrites one key). GET runs without
    ``-r`` (random keys would mostly miss and return nothing): it reads one existing key of
    the same size, which is cache-hot, so the read baseline is, if anything, too strict.
    """
    set_cmd, get_cmd = redis_benchmark_commands(port, size, blocks, pipeline)
    rates = {}
    for cmd in (set_cmd, get_cmd):
        if cmd is get_cmd:
            client.set("key:__rand_int__", bytes(size))
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
        for line in out.splitlines()[1:]:
            cells = [c.strip('"') for c in line.split(",")]
            rates[cells[0]] = float(cells[1]) * size / MB
    return rates["SET"], rates["GET"]


def throughput(srv: RedisServer, total_mb: int, only: str = "") -> None:
    """Per repeat, tier / raw / baseline back to back; medians of MB/s and of ratios."""
    have_bench = bool(shutil.which("redis-benchmark") or shutil.which("valkey-benchmark"))
    if not have_bench:
        print("redis-benchmark not found (apt-get install -y redis-tools); baseline = redis-py")
    label = "redis-benchmark -c 1" if have_bench else "redis-py raw (fallback)"
    client = redis.Redis.from_url(srv.url, socket_timeout=60)
    header = f"{'block':<34}{'value B':>9}{'pipe':>5} {'op':<6}{'tier MB/s':>10}"
    print(f"{header}{'redis-py raw':>13}{label:>22}{'tier/base':>10}")
    for name, (layers, bs, heads, dim, dtype) in LAYOUTS.items():
        if only not in name:
            continue
        codec = BlockCodec(layers, bs, heads, dim, dtype, f"bench/{name}")
        size = len(codec.encode(torch.zeros(codec.shape, dtype=dtype)))
        blocks = max(64, total_mb * 2**20 // size)
        pipeline = max(1, min(256, (16 << 20) // codec.block_bytes()))
        paths = TierPaths(srv.url, codec, blocks, pipeline)
        rows: dict[str, list[tuple[float, float, float]]] = {"write": [], "read": []}
        if have_bench:
            for cmd in redis_benchmark_commands(srv.port, size, blocks, pipeline):
                print("  $ " + " ".join([Path(cmd[0]).name, *cmd[1:]]))
        try:
            # Untimed warm-up: the first writer of a run would otherwise also pay for the
            # server growing its memory, which every later writer (redis-benchmark's too)
            # finds already mapped.
            client.flushdb()
            paths.write()
            paths.read()
            for _ in range(REPEATS):
                # Each writer starts on an empty database, so each pays for new keys alike.
                client.flushdb()
                tier_w = paths.write()
                tier_r = paths.read()
                client.flushdb()
                raw_w, raw_r = raw_pipeline(client, size, blocks, pipeline)
                client.flushdb()
                base_w, base_r = (
                    redis_benchmark(client, srv.port, size, blocks, pipeline)
                    if have_bench
                    else (raw_w, raw_r)
                )
                rows["write"].append((tier_w, raw_w, base_w))
                rows["read"].append((tier_r, raw_r, base_r))
        finally:
            paths.close()
        for op, runs in rows.items():
            tier_v, raw_v, base_v = (statistics.median(r[i] for r in runs) for i in range(3))
            ratio = statistics.median(r[0] / r[2] for r in runs)
            print(
                f"{name:<34}{size:>9}{pipeline:>5} {op:<6}{tier_v:>10.0f}{raw_v:>13.0f}"
                f"{base_v:>22.0f}{ratio:>9.2f}x"
            )
    client.close()


def ttft_ms(engine: Engine, rid: str, prompt: list[int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    engine.add_request(EngineRequest(rid, prompt, ONE))
    for _ in range(100_000):
        for out in engine.step():
            if out.request_id == rid and out.finished:
                return (time.perf_counter() - t0) * 1000, out.cached_tokens
    raise RuntimeError("no first token")


def ttft(srv: RedisServer, model_dir: Path, lengths: list[int]) -> None:
    tier = RedisTierFactory(srv.url)

    def engine(fetch: FetchPolicy) -> Engine:
        config = EngineConfig(
            max_model_len=4096,
            max_num_seqs=4,
            max_batched_tokens=4096,
            num_kv_blocks=1024,
            kv_tier=tier,
            kv_tier_fetch=fetch,
        )
        return Engine(model_dir, config)

    print("\nTTFT on the tiny CPU model (fresh engines, prompt KV written to Redis by another):")
    print(f"{'prompt':>7} {'cached':>7} {'recompute ms':>13} {'fetch ms':>9} {'fetch/rec':>10}")
    writer = engine("never")
    for length in lengths:
        rec: list[float] = []
        fet: list[float] = []
        cached = 0
        for rep in range(REPEATS):
            prompt = torch.randint(
                3, 512, (length,), generator=torch.Generator().manual_seed(rep * 100_003 + length)
            ).tolist()
            ttft_ms(writer, f"w{length}-{rep}", prompt)
            assert writer.kv_tier is not None and writer.kv_tier.writer.flush(30)
            for fetch, sink in (("never", rec), ("always", fet)):
                e = engine(fetch)  # type: ignore[arg-type]
                ttft_ms(e, "warm-up", [5, 6, 7])
                ms, hit = ttft_ms(e, "p", prompt)
                sink.append(ms)
                cached = hit if fetch == "always" else cached
                e.close()
        r, f = statistics.median(rec), statistics.median(fet)
        print(f"{length:>7} {cached:>7} {r:>13.1f} {f:>9.1f} {f / r:>9.2f}x")
    writer.close()


REPEATS = 5


def main() -> None:
    global REPEATS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--total-mb", type=int, default=128, help="data per throughput run")
    ap.add_argument("--server", choices=["valkey", "redis-server"], default="valkey")
    ap.add_argument("--skip-ttft", action="store_true")
    ap.add_argument("--only", default="", help="only block layouts whose name contains this")
    args = ap.parse_args()
    REPEATS = args.repeats
    torch.set_num_threads(1)
    if args.server == "redis-server":
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not on PATH (apt-get install -y redis-server)")
        redis_server_module.server_binary = lambda: binary
    with RedisServer(maxmemory="2gb") as srv:
        with redis.Redis.from_url(srv.url) as probe:
            info = probe.info("server")
        version = info.get("valkey_version") or info.get("redis_version")
        parser = "hiredis" if redis.utils.HIREDIS_AVAILABLE else "python parser"
        print(
            f"server: {args.server} {version} on 127.0.0.1:{srv.port} | "
            f"redis-py {redis.__version__} ({parser}) | medians of {REPEATS}"
        )
        throughput(srv, args.total_mb, args.only)
        if not args.skip_ttft:
            ttft(srv, ensure_checkpoint("llama"), [512, 1024, 2048, 4000])


if __name__ == "__main__":
    main()
