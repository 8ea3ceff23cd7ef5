"""Fixtures of the attacker tier: a fleet served from a background loop (`support.fleet`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleet import Background, fleet


@pytest.fixture(scope="module")
def background_fleet(tiny_model_dir: Path) -> Iterator[Background]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fleet-loop", daemon=True)
    thread.start()
    manager = fleet(tiny_model_dir, workers=2)
    started = asyncio.run_coroutine_threadsafe(manager.__aenter__(), loop).result(120)
    try:
        yield Background(started, loop)
    finally:
        asyncio.run_coroutine_threadsafe(manager.__aexit__(None, None, None), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
