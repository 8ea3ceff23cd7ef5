"""The Mainsail operator: turns a `ModelDeployment` into pools, a RayCluster, a router and a cache.

Layers, outermost first: `handlers` (kopf wiring, thin) → `reconciler` (one pass: observe,
plan, apply, report) → pure functions (`desired*`, `plan`, `status`) that compute children and
status from the spec and what was observed. The Kubernetes API is one injected seam (`kube`).
"""
