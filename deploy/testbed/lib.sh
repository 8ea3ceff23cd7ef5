# Shared by ensure.sh, ensure-node.sh and ensure-netpol.sh (sourced, not run): the wrapper
# module that builds Kubernetes' commands from the Go module proxy, the version ldflags, the
# locked, rename-into-place cache build they all use, and the main() of the scripts that
# provide one cache directory. See docs/testbed.md.

K8S_VERSION=v1.35.4

log() { printf '[testbed %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

has_all() { # dir name...
    local dir=$1 name
    shift
    for name in "$@"; do [[ -x "$dir/$name" ]] || return 1; done
}

# Write into $1 a go.mod requiring k8s.io/kubernetes@$K8S_VERSION with every staging module
# (required at v0.0.0, replaced by ./staging/...) pointed at its published v0.<minor>.<patch>,
# derived from the go.mod the proxy serves. Sets K8S_LDFLAGS (version stamps) for go build.
k8s_wrapper_module() {
    local dir=$1 info mod date replaces pkg major=1 minor=${K8S_VERSION#v1.}
    command -v go >/dev/null || die "go toolchain not found (needed to build Kubernetes $K8S_VERSION)"
    mkdir -p "$dir"
    log "resolving k8s.io/kubernetes@$K8S_VERSION"
    info=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION")
    mod=$(sed -n 's/.*"GoMod": "\(.*\)",*/\1/p' <<<"$info")
    [[ -f "$mod" ]] || die "go mod download gave no go.mod for k8s.io/kubernetes@$K8S_VERSION"
    date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${mod%.mod}.info")
    replaces=$(awk -v v="v0.${K8S_VERSION#v1.}" \
        '$2 == "=>" && $3 ~ /^\.\/staging\// {printf "\t%s => %s %s\n", $1, $1, v}' "$mod")
    [[ $(wc -l <<<"$replaces") -ge 20 ]] || die "unexpected staging replace list in $mod"
    {
        printf 'module mainsail.local/testbed/k8s\n\ngo 1.25.0\n\n'
        grep -E '^godebug ' "$mod" || true
        printf '\nrequire k8s.io/kubernetes %s\n\nreplace (\n%s\n)\n' "$K8S_VERSION" "$replaces"
    } >"$dir/go.mod"
    minor=${minor%%.*}
    K8S_LDFLAGS="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major"
        K8S_LDFLAGS+=" -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=archive -X $pkg.buildDate=$date"
    done
}

# go build one package of the wrapper module in $1 to $2 (nice: the machine is shared).
go_build() {
    local dir=$1 out=$2 pkg=$3 ldflags=${4:--s -w}
    (cd "$dir" && nice -n 10 go build -trimpath -ldflags="$ldflags" -o "$out" "$pkg")
}

# Build the cache entry $1/$2 once: under the lock $1/.$2.lock (a second caller waits, then
# finds it ready), into a fresh $1/.$2.XXXXXX renamed into place only when complete (its `src`
# removed), leftovers of builds killed outright removed first (we hold the lock: none is live).
# $3: a function telling whether a directory is ready; $4: a function building into the fresh
# directory (it gets `bin/` made for it); $5: a note for the cache-miss log line.
locked_build() {
    local root=$1 key=$2 is_ready=$3 build=$4 note=${5:-} dir="$1/$2" start=$SECONDS tmp
    mkdir -p "$root"
    exec 9>"$root/.$key.lock"
    flock 9
    "$is_ready" "$dir" && return
    rm -rf "$root/.$key".??????
    tmp=$(mktemp -d "$root/.$key.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    trap 'exit 130' INT TERM HUP
    mkdir -p "$tmp/bin"
    log "cache miss: building into $dir${note:+ ($note)}"
    "$build" "$tmp"
    rm -rf "$tmp/src"
    chmod 755 "$tmp"
    rm -rf "${dir:?}"
    mv -T "$tmp" "$dir"
    trap - EXIT
    log "done in $((SECONDS - start)) s: $dir"
}

# The whole main() of a script providing one cache entry $1/$2 (ensure-node.sh,
# ensure-netpol.sh), called as `ensure_main ROOT KEY READY BUILD NOTE "$@"` with READY, BUILD
# and NOTE as for locked_build. Script usage: [--print-dir | --check]. The entry's directory
# is the last stdout line; --print-dir prints it without building, --check exits 1 instead of
# building; a warm run only checks READY.
ensure_main() {
    local root=$1 key=$2 is_ready=$3 build=$4 note=$5 dir="$1/$2" mode usage
    shift 5
    mode=${1:-build} usage="usage: $0 [--print-dir | --check]"
    case "$mode" in
        --print-dir) printf '%s\n' "$dir"; return ;;
        --check | build) [[ $# -le 1 ]] || die "$usage" ;;
        *) die "$usage" ;;
    esac
    if "$is_ready" "$dir"; then printf '%s\n' "$dir"; return; fi
    [[ $mode != --check ]] || exit 1
    locked_build "$root" "$key" "$is_ready" "$build" "$note"
    printf '%s\n' "$dir"
}
