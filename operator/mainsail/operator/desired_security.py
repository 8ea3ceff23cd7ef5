"""Pod and container hardening shared by every pod the operator creates.

Why: a pod with root, a writable root file system and Linux capabilities turns any code
execution bug into a foothold on the node. Every operator-created pod runs as a non-root
user with a read-only root file system, no privilege escalation, no capabilities and the
runtime's default seccomp profile; what must be writable (`/tmp`, Ray's session directory,
caches under `$HOME`) is an `emptyDir`. Every container has limits.
"""

from __future__ import annotations

from typing import Any

RUN_AS_USER = 65532
"""The unprivileged uid (and gid) Mainsail's images run as (`deploy/images`), the cache's too."""
REDIS_USER = RUN_AS_USER
SCRATCH_VOLUME = "scratch"
HOME_DIR = "/var/lib/mainsail/home"


def pod_security(user: int = RUN_AS_USER) -> dict[str, Any]:
    """Pod-level securityContext."""
    return {
        "runAsNonRoot": True,
        "runAsUser": user,
        "runAsGroup": user,
        "fsGroup": user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> dict[str, Any]:
    """Container-level securityContext."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def scratch_volumes() -> list[dict[str, Any]]:
    """Writable scratch space (the root file system is read-only)."""
    return [{"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": "2Gi"}}]


def scratch_mounts() -> list[dict[str, Any]]:
    """`/tmp` (Ray's session directory lives there) and `$HOME` (caches)."""
    return [
        {"name": SCRATCH_VOLUME, "mountPath": "/tmp", "subPath": "tmp"},
        {"name": SCRATCH_VOLUME, "mountPath": HOME_DIR, "subPath": "home"},
    ]


def scratch_env() -> list[dict[str, str]]:
    return [{"name": "HOME", "value": HOME_DIR}]


def harden(pod_spec: dict[str, Any], user: int = RUN_AS_USER) -> dict[str, Any]:
    """``pod_spec`` with the securityContexts, scratch space and limits applied (in place)."""
    pod_spec["securityContext"] = pod_security(user)
    pod_spec.setdefault("volumes", []).extend(scratch_volumes())
    for container in [*pod_spec.get("containers", []), *pod_spec.get("initContainers", [])]:
        container["securityContext"] = container_security()
        container.setdefault("volumeMounts", []).extend(scratch_mounts())
        container["env"] = [*container.get("env", []), *scratch_env()]
        resources = container.setdefault("resources", {})
        limits = resources.setdefault("limits", {})
        requests = resources.get("requests", {})
        limits.setdefault("memory", requests.get("memory", "1Gi"))
        limits.setdefault("cpu", _cpu_limit(requests.get("cpu")))
    return pod_spec


def _cpu_limit(request: str | None) -> str:
    """A CPU limit of four times the request (at least one core): bursts, not monopolies."""
    if request is None:
        return "1"
    millis = int(request[:-1]) if request.endswith("m") else int(float(request) * 1000)
    return f"{max(1000, 4 * millis)}m"
