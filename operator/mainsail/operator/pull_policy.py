"""Stamp each container's `imagePullPolicy` from the image it runs.

Why one pass over the finished children rather than a parameter of every builder: the router,
the cache, the Ray head and workers and any init container (the router's model init runs the
worker image) all get the policy configured for their image (`OperatorSettings.pull_policy`),
and a container added later cannot forget it. Without it Kubernetes defaults `:latest` tags to
`Always`, which a node without a registry (the test bed) cannot satisfy.
"""

from __future__ import annotations

from typing import Any

from mainsail.operator.settings import OperatorSettings

_CONTAINER_LISTS = ("initContainers", "containers")


def stamp_pull_policies(node: Any, settings: OperatorSettings) -> None:
    """Set `imagePullPolicy` on every container (in any pod template) under `node`, in place."""
    if isinstance(node, list):
        for item in node:
            stamp_pull_policies(item, settings)
        return
    if not isinstance(node, dict):
        return
    for key in _CONTAINER_LISTS:
        containers = node.get(key)
        if isinstance(containers, list) and all(isinstance(c, dict) for c in containers):
            for container in containers:
                policy = settings.pull_policy(str(container.get("image", "")))
                if policy is not None and "imagePullPolicy" not in container:
                    container["imagePullPolicy"] = policy
    for value in node.values():
        stamp_pull_policies(value, settings)
