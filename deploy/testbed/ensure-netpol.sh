#!/usr/bin/env bash
# Provide the test bed's NetworkPolicy enforcer: kube-router's firewall controller alone
# (`--run-firewall`, no routing, no service proxy), built from the Go module proxy
# (CGO_ENABLED=0) and cached by version next to the other test-bed binaries. The bridge CNI
# enforces no NetworkPolicy; this one does, with iptables + ipset (Debian's `ipset` package)
# inside the node's own network namespace (tests/cluster/test_network_policy.py starts it).
#
# Usage: deploy/testbed/ensure-netpol.sh [--print-dir | --check]
#   Last stdout line: the cache dir; the binary is <dir>/bin/kube-router.
#   --print-dir prints it without building; --check exits 1 instead of building.
# Environment: MAINSAIL_CACHE (default ~/.cache/mainsail); Go's own GOCACHE, GOMODCACHE, ...
# Cold build measured here: 1264 s on 2 cores shared with 8 other jobs (load average ~15).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

KUBE_ROUTER_VERSION=v2.1.0  # the newest version the Go module proxy serves (later ones: 403)

cache_root="${MAINSAIL_CACHE:-$HOME/.cache/mainsail}/testbed"
key="netpol-kube-router-${KUBE_ROUTER_VERSION#v}"

build() {
    local out=$1 src="$1/src"
    command -v go >/dev/null || die "go toolchain not found (needed to build kube-router)"
    export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
    mkdir -p "$src"
    printf 'module mainsail.local/testbed/kuberouter\n\ngo 1.24.0\n\nrequire github.com/cloudnativelabs/kube-router/v2 %s\n' \
        "$KUBE_ROUTER_VERSION" >"$src/go.mod"
    log "building kube-router $KUBE_ROUTER_VERSION"
    go_build "$src" "$out/bin/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
        "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION"
}

ready() { has_all "$1/bin" kube-router; }

note="warm Go cache: ~1 min; cold: ~20 min on 2 busy cores"
ensure_main "$cache_root" "$key" ready build "$note" "$@"; exit  # one line: bash then never reads this file again mid-run
