"""The test bed node's configuration: addresses, certificates and the daemons' config files.

Why apart from `node.py`: what the node *is* (its network plan, its PKI, the files containerd,
the kubelet, CNI and CoreDNS read) changes for other reasons than how it is started, driven and
torn down (`node_lifecycle.py`, `node.py`). Everything here is written into the instance
directory; nothing is started.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTBED = ROOT / "deploy" / "testbed"
NETNS_DIR = Path("/run/netns")
SHIM_SOCKET_DIR = Path("/run/containerd/s")  # fixed in containerd 1.6, shared by instances
NODE_NAME = "mainsail-node"
NODE_IP = "10.255.0.2"
POD_CIDR = "10.244.0.0/16"
POD_SUBNET = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
DNS_IP = NODE_IP  # CoreDNS runs as a process in the node's namespace, on the node IP
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
_CLONE_NEWNET = 0x40000000


def default_base_dir() -> Path:
    return Path(os.environ.get("MAINSAIL_NODE_DIR", "/var/tmp/mainsail-node"))


# --- certificates (openssl CLI, EC P-256: fast) ----------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, text=True, timeout=60)


def make_pki(pki: Path) -> None:
    """A CA; the API server's serving cert (node IP, Service IP, the usual names); the API
    server's client cert for the kubelet (system:masters); the ServiceAccount signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"),
             "-days", "7", "-subj", "/CN=mainsail-testbed-ca")  # fmt: skip
    sans = ",".join(
        [f"IP:{ip}" for ip in ("127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP)]
        + [
            f"DNS:{name}"
            for name in (
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
            )
        ]
    )
    for name, subject, ext in (
        ("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}\nextendedKeyUsage=serverAuth"),
        ("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client",
         "extendedKeyUsage=clientAuth"),
    ):  # fmt: skip
        (pki / f"{name}.ext").write_text(
            f"{ext}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
        )
        _openssl("req", *ec, "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.csr"),
                 "-subj", subject)  # fmt: skip
        _openssl("x509", "-req", "-in", str(pki / f"{name}.csr"), "-CA", str(pki / "ca.crt"),
                 "-CAkey", str(pki / "ca.key"), "-set_serial", f"0x{secrets.token_hex(8)}",
                 "-days", "7", "-extfile", str(pki / f"{name}.ext"),
                 "-out", str(pki / f"{name}.crt"))  # fmt: skip
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(pki / "sa.key"))  # fmt: skip
    _openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for key in pki.glob("*.key"):
        key.chmod(0o600)


# --- the daemons' configuration files ------------------------------------------------------


def kubeconfig_path(instance: Path) -> Path:
    return instance / "admin.kubeconfig"


def containerd_socket(instance: Path) -> Path:
    return instance / "containerd" / "containerd.sock"


def cni_network(instance: Path) -> str:
    """The CNI network's name (libcni keys its cache by it: one per instance)."""
    return f"mainsail-{instance.name}"


def netns_resolv_conf() -> str:
    """resolv.conf for processes run with `ip netns exec` in the node's namespace."""
    return (
        f"nameserver {DNS_IP}\nsearch default.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} "
        f"{CLUSTER_DOMAIN}\noptions ndots:5 timeout:2 attempts:2\n"
    )


def write_configs(instance: Path) -> None:
    """The admin token + kubeconfig, containerd's config, the CNI bridge, the kubelet's config
    and CoreDNS's Corefile, under the instance directory."""
    kubeconfig, socket = kubeconfig_path(instance), containerd_socket(instance)
    d = instance
    pki = d / "pki"
    token = secrets.token_hex(16)
    (d / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
    (d / "tokens.csv").chmod(0o600)
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: testbed\n  cluster:\n    server: https://127.0.0.1:6443\n"
        f"    certificate-authority: {pki / 'ca.crt'}\n"
        f"users:\n- name: admin\n  user:\n    token: {token}\n"
        "contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: admin\n"
        "current-context: testbed\n"
    )
    kubeconfig.chmod(0o600)
    ctd = d / "containerd"
    for sub in ("root", "state", "runc", "opt"):
        (ctd / sub).mkdir(parents=True, exist_ok=True)
    (d / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
    (d / "containerd.toml").write_text(textwrap.dedent(f"""\
        version = 2
        root = "{ctd / 'root'}"
        state = "{ctd / 'state'}"
        disabled_plugins = ["io.containerd.snapshotter.v1.aufs",
          "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
          "io.containerd.snapshotter.v1.devmapper",
          "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
        [grpc]
          address = "{socket}"
        [ttrpc]
          address = "{socket}.ttrpc"
        [plugins."io.containerd.internal.v1.opt"]
          path = "{ctd / 'opt'}"
        [plugins."io.containerd.grpc.v1.cri"]
          sandbox_image = "docker.io/mainsail/pause:testbed"
          restrict_oom_score_adj = true
          disable_tcp_service = true
          stream_server_address = "127.0.0.1"
          stream_server_port = "0"
          enable_selinux = false
          [plugins."io.containerd.grpc.v1.cri".containerd]
            snapshotter = "overlayfs"
            default_runtime_name = "runc"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
              runtime_type = "io.containerd.runc.v2"
              [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                BinaryName = "runc"
                Root = "{ctd / 'runc'}"
                SystemdCgroup = false
          [plugins."io.containerd.grpc.v1.cri".cni]
            bin_dir = "/usr/lib/cni"
            conf_dir = "{d / 'cni' / 'net.d'}"
            max_conf_num = 1
        """))  # fmt: skip
    (d / "cni" / "net.d" / "10-mainsail.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": cni_network(instance),
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_SUBNET}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(d / "cni" / "ipam"),
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            },
            indent=2,
        )
    )
    (d / "kubelet-resolv.conf").write_text(f"nameserver {DNS_IP}\n")
    (d / "kubelet").mkdir(exist_ok=True)
    (d / "kubelet.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: kubelet.config.k8s.io/v1beta1
        kind: KubeletConfiguration
        failCgroupV1: false
        cgroupDriver: cgroupfs
        cgroupsPerQOS: false
        enforceNodeAllocatable: []
        failSwapOn: false
        containerRuntimeEndpoint: unix://{socket}
        resolvConf: {d / 'kubelet-resolv.conf'}
        clusterDomain: {CLUSTER_DOMAIN}
        clusterDNS: [{DNS_IP}]
        podLogsDir: {d / 'pod-logs'}
        readOnlyPort: 0
        healthzBindAddress: 127.0.0.1
        imageGCHighThresholdPercent: 100
        imageGCLowThresholdPercent: 99
        # The node shares the host's disk with everything else on it: the default 10-15 %
        # free-space thresholds put it under disk pressure (taint, evictions, imported
        # images deleted - seen at 15 % free) on a busy machine while gigabytes are free.
        evictionHard:
          memory.available: "100Mi"
          nodefs.available: "2%"
          imagefs.available: "2%"
          nodefs.inodesFree: "2%"
        serializeImagePulls: false
        authentication:
          anonymous: {{enabled: false}}
          webhook: {{enabled: true}}
          x509: {{clientCAFile: {pki / 'ca.crt'}}}
        authorization:
          mode: Webhook
        """))  # fmt: skip
    (d / "Corefile").write_text(textwrap.dedent(f"""\
        {CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
            bind {DNS_IP}
            errors
            ready 127.0.0.1:8181
            kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
                kubeconfig {kubeconfig} testbed
                pods insecure
                ttl 5
            }}
        }}
        .:53 {{
            bind {DNS_IP}
            template ANY ANY {{
                rcode NXDOMAIN
            }}
        }}
        """))  # fmt: skip
