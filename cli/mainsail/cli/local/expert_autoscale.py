"""`mainsail up`'s expert-parallel autoscaler: the operator's round, run against the routers
this process started, with a status file where a cluster has ``status.expertParallel``.

Why the operator's code: the decision (`expert_parallel_policy.decide`), the merge of the
router replicas' readings (`expert_merge`), the router I/O (`expert_signals.HttpExpertRouter`)
and the round that asks the workers and says why (`expert_round`) are one implementation, so
a deployment's degree moves locally the way it moves on a cluster. What differs is only how
the routers are found (this process knows their ports), the admin token (this process's
``MAINSAIL_ROUTER_ADMIN_TOKEN``, which its routers inherit; without one their admin API is
open on their address and any bearer is taken), and where the result goes:

- every change (or failed change) is a line on stderr, ``mainsail up: ExpertsScaled
  unified: expertParallel 1 -> 2 (...)`` — the Event a cluster would record;
- ``status.json`` (path in the ready file's ``status_file`` and the start-up text) holds each
  role's last record, in the CRD's ``status.expertParallel.<role>`` shape, and the last
  ``EVENTS_KEPT`` events; `mainsail status` prints it with each worker's live degree.

The cooldown and delay clocks live in ``states`` for the life of the stack.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mainsail.operator.expert_round import (
    AdminAccess,
    ExpertPass,
    ExpertState,
    bounds_of,
    expert_round,
    rfc3339,
    targets_of,
)
from mainsail.operator.expert_signals import ExpertRouter
from mainsail.operator.replica_reads import read_urls
from mainsail.spec.deployment import ModelDeploymentSpec
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV

log = logging.getLogger(__name__)

EVENTS_KEPT = 50
"""Events the status file keeps (the newest), like a short Event history."""

OPEN_ADMIN = "none"
"""The bearer sent when the routers have no admin token (their admin API then takes any)."""


class LocalExpertScaler:
    """Runs expert-parallel rounds every ``interval`` seconds on a background thread.

    ``metrics_urls``: every router replica's `/metrics`; ``admin_url``: one router's base URL
    for `/workers`; ``say``: where event lines go; ``clock``: wall seconds (status times).
    """

    def __init__(
        self,
        spec: ModelDeploymentSpec,
        metrics_urls: Sequence[str],
        admin_url: str,
        status_file: Path,
        router: ExpertRouter,
        *,
        interval: float,
        say: Callable[[str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        bounds = bounds_of(spec)
        if bounds is None:
            raise ValueError("engine.expertParallel: not set, nothing to autoscale")
        if not interval > 0:
            raise ValueError(f"autoscale interval must be > 0 seconds, got {interval}")
        self._bounds = bounds
        self._targets = targets_of(spec)
        self._urls = list(metrics_urls)
        self._router = router
        self._admin = AdminAccess(admin_url, self._token)
        self.status_file = status_file
        self._interval = interval
        self._say = say
        self._clock = clock
        self._states: dict[str, ExpertState] = {}
        self._status: dict[str, Any] = {}
        self._events: list[dict[str, str]] = []

    async def _token(self) -> str | None:
        return os.environ.get(ADMIN_TOKEN_ENV, "").strip() or OPEN_ADMIN

    async def run_pass(self) -> ExpertPass:
        """One round: read every router, decide, ask, then write the status file."""
        reads = await read_urls(self._urls, self._router.expert_reading)
        now = self._clock()
        result = await expert_round(
            reads, self._bounds, self._targets, self._status, self._states,
            self._router, self._admin, now=now,
        )  # fmt: skip
        for change in result.changes:
            kind, reason = (
                ("Normal", "ExpertsScaled") if change.ok else ("Warning", "ExpertScaleFailed")
            )
            self._say(f"{reason} {change.message}")
            event = {
                "time": rfc3339(now),
                "type": kind,
                "reason": reason,
                "message": change.message,
            }
            self._events = [*self._events, event][-EVENTS_KEPT:]
        self._status = result.status
        self._write(now, result.unavailable)
        return result

    def _write(self, now: float, unavailable: str | None) -> None:
        """Replace the status file whole (a reader never sees half of it)."""
        body = {
            "updated": rfc3339(now),
            "router": self._admin.url,
            "expertParallel": self._status,
            "events": self._events,
        }
        if unavailable is not None:
            body["unavailable"] = unavailable
        partial = self.status_file.with_suffix(".tmp")
        partial.write_text(json.dumps(body, indent=2))
        partial.replace(self.status_file)

    def start_background(self) -> tuple[threading.Thread, threading.Event]:
        """A daemon thread running a round every ``interval`` until the event is set; a round
        that fails is said and the next one runs (a router restarting, a worker replaced)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self._interval):
                try:
                    asyncio.run(self.run_pass())
                except Exception as exc:  # one bad round must not end autoscaling
                    log.warning("expert-parallel round failed", exc_info=True)
                    self._say(
                        f"expert-parallel autoscaler: round failed: {type(exc).__name__}: {exc}"
                    )

        thread = threading.Thread(target=loop, name="expert-autoscaler", daemon=True)
        thread.start()
        return thread, stop


def read_status(path: Path) -> dict[str, Any]:
    """A status file as `LocalExpertScaler` wrote it; ValueError naming the file if not."""
    try:
        body = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the status file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a mainsail up status file: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("expertParallel"), dict):
        raise ValueError(f"{path}: not a mainsail up status file (no expertParallel)")
    return body
