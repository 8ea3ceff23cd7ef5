"""`mainsail status FILE`: what a local stack's expert-parallel autoscaler last decided, and
each worker's live degree — locally what ``kubectl get modeldeployment -o yaml`` (its
``status.expertParallel``) and ``kubectl get events`` show on a cluster.

``FILE`` is the status file `mainsail up` names at start (and in its ready file's
``status_file``). The workers' degrees come live from the stack's router (`GET /workers`, an
admin call: with ``MAINSAIL_ROUTER_ADMIN_TOKEN`` when set, else the run's token `mainsail up`
wrote next to the status file); if the router cannot be read the file is still shown.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mainsail.cli.local.expert_autoscale import read_status
from mainsail.spec.router_auth import ADMIN_TOKEN_ENV, LOCAL_ADMIN_TOKEN_FILE

EVENTS_SHOWN = 10


def render(status: dict[str, Any], workers: list[dict[str, Any]] | None) -> str:
    """The status file (and the router's worker list, None when unreadable) as text."""
    lines = [f"expert parallelism (as of {status.get('updated', '?')}):"]
    roles: dict[str, Any] = status["expertParallel"]
    if not roles:
        lines.append("  no decision yet")
    for role, rec in sorted(roles.items()):
        lines.append(
            f"  {role}: ep {rec.get('current')} -> target {rec.get('target')} "
            f"(recommended {rec.get('recommended')}, imbalance {rec.get('imbalance', 1.0)}, "
            f"last change {rec.get('lastChange') or 'never'})"
        )
        lines.append(f"    {rec.get('reason', '')}")
    if status.get("unavailable"):
        lines.append(f"  routers unreadable: {status['unavailable']}")
    if workers is None:
        lines.append(f"workers: router {status.get('router')} not readable")
    else:
        lines.append("workers:")
        for w in workers:
            moving = w.get("expert_parallel_target") or 0
            degree = w.get("expert_parallel") or 0
            to = f" (moving to {moving})" if moving and moving != degree else ""
            lines.append(f"  {w.get('id')} [{w.get('role')}]: ep {degree}{to}")
    events = status.get("events") or []
    lines.append("events:" if events else "events: none")
    for event in events[-EVENTS_SHOWN:]:
        lines.append(f"  {event['time']} {event['type']} {event['reason']}: {event['message']}")
    return "\n".join(lines)


def admin_token(status_file: Path) -> str | None:
    """The admin token to send: the environment's, else the run's file beside ``status_file``
    (`mainsail up` writes both there, mode 0600); None when neither is readable."""
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if token:
        return token
    try:
        return (status_file.parent / LOCAL_ADMIN_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def live_workers(
    router: str, token: str | None = None, timeout: float = 5.0
) -> list[dict[str, Any]] | None:
    """The router's `GET /workers` list (None when it cannot be read)."""
    request = urllib.request.Request(f"{router.rstrip('/')}/workers")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data = json.loads(resp.read()).get("data")
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return [w for w in data if isinstance(w, dict)] if isinstance(data, list) else None


def main(path: Path, as_json: bool = False) -> int:
    """Print the status; 2 when the file is not a status file."""
    try:
        status = read_status(path)
    except ValueError as exc:
        print(f"mainsail status: {exc}", file=sys.stderr)
        return 2
    router = status.get("router")
    workers = live_workers(router, admin_token(path)) if isinstance(router, str) else None
    if as_json:
        print(json.dumps({**status, "workers": workers}, indent=2))
    else:
        print(render(status, workers))
    return 0
