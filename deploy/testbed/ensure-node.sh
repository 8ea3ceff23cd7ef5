#!/usr/bin/env bash
# Provide the node half of the Mainsail test bed (see docs/testbed.md): kubelet,
# kube-scheduler and kube-proxy at the API server's Kubernetes version, CoreDNS, and the
# KubeRay operator with its CRDs, all built from the Go module proxy (CGO_ENABLED=0) and
# cached by version next to (not inside) ensure.sh's API-server binaries.
#
# Usage: deploy/testbed/ensure-node.sh [--print-dir | --check]
#   Last stdout line: the cache dir; binaries in <dir>/bin, KubeRay CRDs in <dir>/crds.
#   --print-dir prints it without building; --check exits 1 instead of building.
# Environment: MAINSAIL_CACHE (default ~/.cache/mainsail); Go's own GOCACHE, GOMODCACHE, ...
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

COREDNS_VERSION=v1.12.4
KUBERAY_VERSION=v1.5.0
NODE_BINARIES=(kubelet kube-scheduler kube-proxy coredns kuberay-operator)
KUBERAY_CRDS=(ray.io_rayclusters.yaml ray.io_rayjobs.yaml ray.io_rayservices.yaml)

cache_root="${MAINSAIL_CACHE:-$HOME/.cache/mainsail}/testbed"
key="node-k8s-${K8S_VERSION#v}-coredns-${COREDNS_VERSION#v}-kuberay-${KUBERAY_VERSION#v}"

ready() { # dir
    has_all "$1/bin" "${NODE_BINARIES[@]}" || return 1
    local crd
    for crd in "${KUBERAY_CRDS[@]}"; do [[ -s "$1/crds/$crd" ]] || return 1; done
}

build_node() {
    local out=$1 src="$1/src" t dir
    export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
    k8s_wrapper_module "$src/k8s"
    for t in kubelet kube-scheduler kube-proxy; do
        log "building $t $K8S_VERSION"
        go_build "$src/k8s" "$out/bin/$t" "k8s.io/kubernetes/cmd/$t" "$K8S_LDFLAGS"
    done

    log "building coredns $COREDNS_VERSION"
    mkdir -p "$src/coredns"
    printf 'module mainsail.local/testbed/coredns\n\ngo 1.24.0\n\nrequire github.com/coredns/coredns %s\n' \
        "$COREDNS_VERSION" >"$src/coredns/go.mod"
    go_build "$src/coredns" "$out/bin/coredns" github.com/coredns/coredns \
        "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION"

    log "building kuberay-operator $KUBERAY_VERSION"
    mkdir -p "$src/kuberay"
    printf 'module mainsail.local/testbed/kuberay\n\ngo 1.24.0\n\nrequire github.com/ray-project/kuberay/ray-operator %s\n' \
        "$KUBERAY_VERSION" >"$src/kuberay/go.mod"
    go_build "$src/kuberay" "$out/bin/kuberay-operator" github.com/ray-project/kuberay/ray-operator
    # The CRDs of the same version come inside the module zip.
    dir=$(cd "$src/kuberay" && go list -m -f '{{.Dir}}' github.com/ray-project/kuberay/ray-operator)
    mkdir -p "$out/crds"
    for t in "${KUBERAY_CRDS[@]}"; do cp "$dir/config/crd/bases/$t" "$out/crds/$t"; done
    chmod 644 "$out"/crds/*.yaml
}

note="warm Go cache: ~1 min; cold: ~20 min on 2 busy cores"
ensure_main "$cache_root" "$key" ready build_node "$note" "$@"; exit  # one line: bash then never reads this file again mid-run
