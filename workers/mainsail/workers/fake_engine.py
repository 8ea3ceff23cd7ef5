"""A fake engine that streams tokens instantly: for router overhead benchmarks and demos.

It serves through the real `WorkerService` and registers like a real worker, so a benchmark
measures the real router, transport and fronts with the model's compute taken out. It is
never evidence that generation works; the engine's own tests are.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from mainsail.workers.engine import EngineMetrics, EngineRequest, Histogram, KVEvent, RequestOutput


class FakeEngine:
    """Yields ``max_tokens`` tokens per request, ``token_delay`` seconds apart."""

    def __init__(self, token_delay: float = 0.0, kv_blocks_total: int = 1024) -> None:
        self.token_delay = token_delay
        self.kv_blocks_total = kv_blocks_total
        self.running = 0
        self.finished = 0
        self.generated = 0
        self.prompt_tokens = 0

    async def generate(self, req: EngineRequest) -> AsyncIterator[RequestOutput]:
        n = req.sampling.max_tokens
        self.running += 1
        self.prompt_tokens += len(req.prompt_token_ids)
        try:
            for i in range(n):
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                last = i == n - 1
                self.generated += 1
                yield RequestOutput(
                    request_id=req.request_id,
                    new_token_ids=[(i % 90) + 10],
                    new_text=f" w{i}",
                    finished=last,
                    finish_reason="length" if last else None,
                    prompt_tokens=len(req.prompt_token_ids),
                    completion_tokens=i + 1,
                    cached_tokens=0,
                )
        finally:
            self.running -= 1
            self.finished += 1

    def abort(self, request_id: str) -> None:
        return None

    def metrics(self) -> EngineMetrics:
        empty = Histogram((), (0,), 0.0, 0)
        return EngineMetrics(
            running=self.running,
            waiting=0,
            kv_blocks_used=0,
            kv_blocks_total=self.kv_blocks_total,
            prefix_hit_tokens=0,
            prompt_tokens_total=self.prompt_tokens,
            generation_tokens_total=self.generated,
            step_time_ms_last=0.0,
            step_time_ms_ema=0.0,
            ttft=empty,
            tpot=empty,
            preemptions=0,
            num_requests_finished=self.finished,
        )

    def drain_kv_events(self) -> list[KVEvent]:
        return []

    async def flush_kv_tier(self, timeout: float) -> bool:
        return False  # no KV, no tier

    def kv_snapshot(self) -> list[int]:
        return []
