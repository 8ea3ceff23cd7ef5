"""The operator's periodic passes (`mainsail.operator.periodic`): one loop, no kopf timers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from mainsail.operator.periodic import Schedule, Ticker, due


def test_due_after_each_interval() -> None:
    schedule = Schedule(resynced=10.0, autoscaled=10.0)
    assert due(schedule, 12.0, resync_s=60.0, autoscale_s=2.0) == (False, True)
    assert due(schedule, 70.0, resync_s=60.0, autoscale_s=2.0) == (True, True)
    assert due(schedule, 10.5, resync_s=60.0, autoscale_s=2.0) == (False, False)


def _body(ns: str, name: str, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name, "generation": generation}}


def test_ticker_runs_due_passes_with_the_latest_body_and_forgets() -> None:
    now = [0.0]
    resynced: list[tuple[str, str]] = []
    autoscaled: list[Mapping[str, Any]] = []

    async def resync(ns: str, name: str) -> None:
        resynced.append((ns, name))

    async def autoscale(body: Mapping[str, Any]) -> None:
        if body["metadata"]["name"] == "broken":
            raise RuntimeError("scrape failed")
        autoscaled.append(body)

    ticker = Ticker(resync, autoscale, resync_s=10.0, autoscale_s=3.0, clock=lambda: now[0])
    ticker.seen(_body("a", "one"))
    ticker.seen(_body("a", "broken"))
    ticker.seen({"metadata": {"name": "no-namespace"}})
    assert ticker.known() == {("a", "one"), ("a", "broken")}
    asyncio.run(ticker.tick())
    assert resynced == [] and autoscaled == []  # a first pass only one interval after seen
    now[0] = 3.0
    ticker.seen(_body("a", "one", generation=2))
    asyncio.run(ticker.tick())  # the broken autoscale is logged, not raised; others still run
    assert resynced == [] and [b["metadata"]["generation"] for b in autoscaled] == [2]
    now[0] = 10.0
    asyncio.run(ticker.tick())
    assert sorted(resynced) == [("a", "broken"), ("a", "one")] and len(autoscaled) == 2
    ticker.forget("a", "one")
    now[0] = 100.0
    asyncio.run(ticker.tick())
    assert ("a", "one") not in ticker.known() and resynced.count(("a", "one")) == 1
