#!/usr/bin/env bash
# Create a kind cluster, build and load Mainsail's images, install KubeRay and the chart, and
# apply an example. Needs docker, kind, kubectl and helm. Cannot run on machines without a
# container engine (the project's CI uses the envtest-style test bed instead).
#
# Usage: deploy/kind/up.sh [example.yaml]   (default: deploy/examples/tiny.yaml)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
example=${1:-$root/deploy/examples/tiny.yaml}
cluster=${MAINSAIL_KIND_CLUSTER:-mainsail}
tag=${MAINSAIL_IMAGE_TAG:-dev}
kuberay_version=${KUBERAY_VERSION:-1.5.0}

for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || { echo "up.sh: $tool not found" >&2; exit 1; }
done

if ! kind get clusters | grep -qx "$cluster"; then
    kind create cluster --name "$cluster" --config "$here/kind-config.yaml"
fi
kubectl config use-context "kind-$cluster"

# The same build files the engine-less builder (deploy/images/build.py) reads.
for component in operator router worker redis; do
    DOCKER_BUILDKIT=1 docker build -f "$root/deploy/images/Dockerfile.$component" \
        -t "mainsail/$component:$tag" "$root"
    kind load docker-image --name "$cluster" "mainsail/$component:$tag"
done

helm repo add kuberay https://ray-project.github.io/kuberay-helm/ >/dev/null
helm repo update kuberay >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator \
    --version "$kuberay_version" --namespace kuberay-system --create-namespace --wait

helm upgrade --install mainsail "$root/charts/mainsail" \
    --namespace mainsail-system --create-namespace --wait \
    --set images.operator.repository=mainsail/operator --set images.operator.tag="$tag" \
    --set images.router.repository=mainsail/router --set images.router.tag="$tag" \
    --set images.worker.repository=mainsail/worker --set images.worker.tag="$tag" \
    --set images.cache.repository=mainsail/redis --set images.cache.tag="$tag" \
    --set images.operator.pullPolicy=Never --set images.router.pullPolicy=Never \
    --set images.worker.pullPolicy=Never --set images.cache.pullPolicy=Never

kubectl apply -f "$example"
kubectl get modeldeployments,servingpools,rayclusters
echo "Watch it become Ready: kubectl wait --for=condition=Ready modeldeployment --all --timeout=15m"
