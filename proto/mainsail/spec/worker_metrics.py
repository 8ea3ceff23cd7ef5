"""Where a cluster worker serves its Prometheus `/metrics`: the contract between the worker
(which binds it), the operator (which names the container port, annotates the pod and lets
scrapes through the NetworkPolicy) and the chart's PodMonitor (which selects the port by name),
written once here. Locally workers take a free port (`WorkerSpec.metrics_port` = 0) instead.
"""

from __future__ import annotations

WORKER_METRICS_PORT = 9400
WORKER_METRICS_PORT_NAME = "metrics"
