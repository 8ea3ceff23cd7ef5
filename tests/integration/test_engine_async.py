"""`AsyncEngine`: streams per request from one engine thread; cancel aborts; errors surface."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from mainsail.workers.engine import (
    AsyncEngine,
    Engine,
    EngineConfig,
    EngineInputError,
    EngineRequest,
    RequestOutput,
    SamplingParams,
)

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


async def _collect(engine: AsyncEngine, req: EngineRequest) -> list[RequestOutput]:
    return [out async for out in engine.generate(req)]


@pytest.mark.integration
async def test_concurrent_streams_match_the_sync_engine(tiny_model_dir: Path) -> None:
    config = EngineConfig(max_model_len=128)
    prompts = {f"r{i}": list(range(5, 12 + 3 * i)) for i in range(6)}
    sync = Engine(tiny_model_dir, config)
    for rid, p in prompts.items():
        sync.add_request(EngineRequest(rid, p, GREEDY))
    expected: dict[str, list[int]] = {rid: [] for rid in prompts}
    for _ in range(1000):
        if not sync.has_unfinished():
            break
        for out in sync.step():
            expected[out.request_id] += out.new_token_ids
    engine = AsyncEngine(Engine(tiny_model_dir, config))
    try:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(_collect(engine, EngineRequest(r, p, GREEDY)) for r, p in prompts.items())
            ),
            timeout=60,
        )
        for rid, outs in zip(prompts, results, strict=True):
            assert [t for o in outs for t in o.new_token_ids] == expected[rid]
            assert outs[-1].finished and sum(not o.finished for o in outs) == len(outs) - 1
        assert engine.metrics().num_requests_finished == 6
        assert any(e.kind == "stored" for e in engine.drain_kv_events())
    finally:
        await engine.shutdown()


@pytest.mark.integration
async def test_bad_input_raises_before_output_and_cancel_aborts(tiny_model_dir: Path) -> None:
    engine = AsyncEngine(Engine(tiny_model_dir, EngineConfig(max_model_len=128)))
    try:
        with pytest.raises(EngineInputError, match="prompt is empty"):
            await _collect(engine, EngineRequest("bad", [], GREEDY))
        long = SamplingParams(temperature=0.0, max_tokens=100, ignore_eos=True)
        stream = engine.generate(EngineRequest("long", [5, 6, 7], long))
        first = await asyncio.wait_for(anext(stream), timeout=30)
        assert first.new_token_ids
        await stream.aclose()
        for _ in range(200):
            if engine.metrics().num_requests_finished == 1 and engine.metrics().running == 0:
                break
            await asyncio.sleep(0.02)
        assert engine.metrics().num_requests_finished == 1
        assert engine.metrics().kv_blocks_used == 0
        outs = await asyncio.wait_for(
            _collect(engine, EngineRequest("next", [5, 6], GREEDY)), timeout=30
        )
        assert outs[-1].finish_reason == "length"
    finally:
        await engine.shutdown()


@pytest.mark.integration
async def test_abort_ends_the_stream_with_reason_abort(tiny_model_dir: Path) -> None:
    engine = AsyncEngine(Engine(tiny_model_dir, EngineConfig(max_model_len=512)))
    try:
        params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        outs: list[RequestOutput] = []

        async def consume() -> None:
            async for out in engine.generate(EngineRequest("x", [5, 6, 7], params)):
                outs.append(out)
                if len(outs) == 2:
                    engine.abort("x")

        await asyncio.wait_for(consume(), timeout=30)
        assert outs[-1].finish_reason == "abort" and len(outs) < 400
    finally:
        with contextlib.suppress(Exception):
            await engine.shutdown()
