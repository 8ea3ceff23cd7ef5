#!/usr/bin/env bash
# Debian packages the test bed's node needs (tests/cluster, docs/testbed.md): containerd, runc,
# the CNI plugins, iptables, ipset (the NetworkPolicy enforcer), iproute2, util-linux (nsenter),
# mmdebstrap, busybox-static, gcc and libc6-dev (the pause image), openssl. Installs only what
# is missing; needs root and apt.
# Without root it says so and exits 0: the cluster tier then skips.
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables iproute2 util-linux mmdebstrap
          busybox-static gcc libc6-dev openssl conntrack ipset)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "node test bed: not root, so not installing ${missing[*]}; tests/cluster will skip" >&2
    exit 0
fi
command -v apt-get >/dev/null || { echo "node test bed: no apt-get to install ${missing[*]}" >&2; exit 1; }
echo "node test bed: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
