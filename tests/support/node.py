"""A real single-node Kubernetes for tests, confined to a network namespace the test bed makes.

The API-server-only test bed (tests/integration/conftest.py) never runs a pod. This one does:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a kubelet driving Debian's
containerd + runc with the CNI bridge, kube-proxy (iptables mode), CoreDNS and optionally the
KubeRay operator, all as plain processes built from upstream sources (deploy/testbed/).

Every process runs inside one network namespace per instance (`msn-<hex>`) that has no route
out of the machine: the CNI bridge, the pods' veths and every iptables rule the kubelet and
kube-proxy program live there, so nothing touches the host's tables, a Service not yet
programmed cannot send a packet anywhere else, and two instances (same CIDRs) run side by side.
Tests reach the node with `ip netns exec <ns> kubectl ...` (`Node.kubectl`), by running any
command there (`Node.run_in_netns`), or by running Python callables on a thread that joined the
namespace (`Node.in_netns`).

Teardown is by the test bed's own ids only (pids it recorded, its containerd's socket, its
namespace name): kubelet, containerd's tasks, containerd, shims, the pods' `cni-*` namespaces
whose veth peer is in this instance's namespace, mounts under the instance dir, the namespace
itself (taking the bridge, veths and chains with it). An instance whose owner process died is
cleaned the same way by the next start.

By hand (as root): `.venv/bin/python scripts/testbed_node.py up [--kuberay] [--image TAR ...]`,
see docs/testbed.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from support.node_images import busybox_image, debian_python_image, pause_image

T = TypeVar("T")
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


class NodeError(RuntimeError):
    """The node could not be started or driven; the message names the step and its log."""


def support_problem() -> str | None:
    """Why a node cannot run here (None when it can): root, netns, tools."""
    if os.geteuid() != 0:
        return "the node test bed needs root (network namespaces, mounts, containerd)"
    missing = [
        tool
        for tool in (
            "ip",
            "nsenter",
            "unshare",
            "containerd",
            "ctr",
            "runc",
            "iptables",
            "gcc",
            "openssl",
            "mmdebstrap",
        )
        if shutil.which(tool) is None
    ]
    if missing:
        return f"missing tools: {', '.join(missing)} (scripts/node-deps.sh installs them)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"no network namespace support (unshare --net: {probe.stderr.strip()})"
    return None


# --- processes, by recorded pid + start time ---------------------------------------------


def _start_time(pid: int) -> int | None:
    """Kernel start time of pid (clock ticks since boot), None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _same_process(pid: int, start: int) -> bool:
    return _start_time(pid) == start


def _die_with_parent() -> None:
    """Child-side: SIGKILL when the process that started it dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _signal_and_wait(pid: int, start: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process group led by pid, then SIGKILL; only if pid is still that process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _same_process(pid, start):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _same_process(pid, start):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)


def _run(
    argv: Sequence[str], check: bool = True, timeout: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "grpc_proxy"}


def _node_env(**extra: str) -> dict[str, str]:
    """os.environ without proxy settings (nothing in the namespace can reach a proxy; a Go
    client would otherwise send the API server's traffic to one), plus extra."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    return {**env, **extra}


def _enter_netns(path: str) -> None:
    """Thread initializer: move this thread (only) into the network namespace at path."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


# --- certificates (openssl CLI, EC P-256: fast) ----------------------------------------------


def _openssl(*args: str) -> None:
    _run(["openssl", *args])


def _make_pki(pki: Path) -> None:
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


# --- binaries ---------------------------------------------------------------------------------


def _ensure(script: str) -> Path:
    env = {**os.environ, "MAINSAIL_PYTHON": os.environ.get("MAINSAIL_PYTHON", sys.executable)}
    proc = subprocess.run(
        ["bash", str(TESTBED / script)], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        raise NodeError(f"{script} failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Binaries:
    """Where the server binaries (ensure.sh) and node binaries (ensure-node.sh) are."""

    server_bin: Path
    node_dir: Path

    @property
    def node_bin(self) -> Path:
        return self.node_dir / "bin"

    @property
    def kuberay_crds(self) -> list[Path]:
        return sorted((self.node_dir / "crds").glob("*.yaml"))

    @classmethod
    def ensure(cls) -> Binaries:
        return cls(server_bin=_ensure("ensure.sh"), node_dir=_ensure("ensure-node.sh"))


# --- the node ----------------------------------------------------------------------------------


@dataclass
class Node:
    """One running single-node cluster in its own network namespace."""

    id: str
    dir: Path
    binaries: Binaries
    log_dir: Path
    kuberay: bool = False
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _executor: concurrent.futures.ThreadPoolExecutor | None = None
    _imported: set[str] = field(default_factory=set)
    started_in: float = 0.0

    # -- names and paths
    @property
    def netns(self) -> str:
        return self.id

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.id

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def containerd_socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def server(self) -> str:
        """The API server's URL, valid inside the node's namespace."""
        return f"https://{NODE_IP}:6443"

    # -- driving it from the host
    def netns_argv(self, argv: Sequence[str]) -> list[str]:
        """argv prefixed with `ip netns exec <ns>` (also gives it the node's resolv.conf)."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run_in_netns(
        self,
        argv: Sequence[str],
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the node's namespace; CalledProcessError (with stderr) if check."""
        cmd = self.netns_argv(argv)
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout,
            env=_node_env(KUBECONFIG=str(self.kubeconfig), **(env or {})),
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        kubectl = str(self.binaries.server_bin / "kubectl")
        return self.run_in_netns(
            [kubectl, "--kubeconfig", str(self.kubeconfig), *args],
            input=input, check=check, timeout=timeout,
        )  # fmt: skip

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        helm = str(self.binaries.server_bin / "helm")
        return self.run_in_netns(
            [helm, "--kubeconfig", str(self.kubeconfig), *args],
            input=input, check=check, timeout=timeout,
        )  # fmt: skip

    def in_netns(self, fn: Callable[..., T], *args: Any, timeout: float = 120.0) -> T:
        """Run fn(*args) on a thread inside the node's namespace: sockets it opens are there.

        (DNS from that thread still reads the host's /etc/resolv.conf: use Service IPs, see
        `service_ip`, or `run_in_netns` for name lookups through CoreDNS.)"""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=16,
                thread_name_prefix=f"netns-{self.id}",
                initializer=_enter_netns,
                initargs=(str(self.netns_path),),
            )
        return self._executor.submit(fn, *args).result(timeout=timeout)

    def service_ip(self, namespace: str, name: str) -> str:
        return self.kubectl(
            "get", "service", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}"
        ).stdout.strip()

    def http_get(self, url: str, timeout: float = 5.0, ca: bool = False) -> tuple[int, bytes]:
        """GET url from inside the namespace; (status, body). TLS verified against the CA if ca."""
        context = ssl.create_default_context(cafile=str(self.ca_file)) if ca else None

        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

        def get() -> tuple[int, bytes]:
            try:
                with opener.open(url, timeout=timeout) as resp:
                    return int(resp.status), resp.read()
            except urllib.error.HTTPError as exc:
                return int(exc.code), exc.read()

        return self.in_netns(get, timeout=timeout + 5)

    def import_image(self, tar: Path | str) -> None:
        """Import an OCI/Docker image tar into this node's containerd (namespace k8s.io)."""
        _run(
            ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", "images", "import",
             str(tar)],
            timeout=900,
        )  # fmt: skip

    def ensure_image(self, tar: Path | str) -> None:
        """Import tar unless this node already imported the same file (path, size, mtime)."""
        st = Path(tar).stat()
        key = f"{Path(tar).resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if key not in self._imported:
            self.import_image(tar)
            self._imported.add(key)

    def images(self) -> list[str]:
        out = _run(
            ["ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", "images", "ls", "-q"]
        ).stdout
        return out.split()

    def create_namespace(self, name: str, timeout: float = 60.0) -> None:
        """Create a namespace and wait for its `default` ServiceAccount (pods need it)."""
        self.kubectl("create", "namespace", name)
        self.wait_for(
            lambda: self.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
            timeout,
            f"ServiceAccount default in namespace {name}",
        )

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.5)
        raise NodeError(f"timed out after {timeout:.0f} s waiting for {what}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    # -- start
    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        """Start a daemon inside the namespace (same mount namespace as the host, so the
        kubelet's volume mounts are visible to containerd), recording pid and start time."""
        log = self.log_dir / f"{name}.log"
        path = f"{self.binaries.node_bin}:{self.binaries.server_bin}:{os.environ.get('PATH', '')}"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["nsenter", f"--net={self.netns_path}", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent,
                env=_node_env(PATH=path, **(env or {})),
            )  # fmt: skip
        start = None
        for _ in range(100):
            start = _start_time(proc.pid)
            if start is not None:
                break
            time.sleep(0.01)
        if start is None:
            raise NodeError(f"{name} exited at once:\n{self.log_tail(name)}")
        self._procs[name] = proc
        (self.dir / "pids").mkdir(exist_ok=True)
        (self.dir / "pids" / name).write_text(f"{proc.pid} {start}\n")

    def _wait_http(self, name: str, url: str, ca: bool = False) -> None:
        proc = self._procs[name]
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                status, body = self.http_get(url, timeout=3, ca=ca)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except (OSError, concurrent.futures.TimeoutError) as exc:
                last = str(exc)
            time.sleep(0.3)
        raise NodeError(
            f"{name} not ready at {url} (exit={proc.poll()}, last={last}):\n{self.log_tail(name)}"
        )

    def start(self, images: Sequence[Path] = ()) -> None:
        t0 = time.monotonic()
        self._make_netns()
        _make_pki(self.dir / "pki")
        self._write_configs()
        bins, node_bin = self.binaries.server_bin, self.binaries.node_bin
        pki = self.dir / "pki"
        self._spawn("etcd", [
            str(bins / "etcd"), f"--data-dir={self.dir / 'etcd'}",
            "--listen-client-urls=http://127.0.0.1:2379",
            "--advertise-client-urls=http://127.0.0.1:2379",
            "--listen-peer-urls=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls=http://127.0.0.1:2380",
            "--initial-cluster=default=http://127.0.0.1:2380",
            "--listen-metrics-urls=http://127.0.0.1:2381",
            "--unsafe-no-fsync", "--log-level=warn",
        ])  # fmt: skip
        # containerd does not need the API server: start it meanwhile and import images.
        self._spawn("containerd", ["containerd", "--config", str(self.dir / "containerd.toml")])
        self._wait_http("etcd", "http://127.0.0.1:2381/health")
        self._spawn("kube-apiserver", [
            str(bins / "kube-apiserver"), "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0", f"--advertise-address={NODE_IP}", "--secure-port=6443",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.dir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true", "--profiling=false",
        ])  # fmt: skip
        self._wait_socket("containerd", self.containerd_socket)
        for tar in (pause_image(), busybox_image(), *images):
            self.ensure_image(tar)
        self._wait_http("kube-apiserver", "https://127.0.0.1:6443/readyz", ca=True)
        kubeconfig = str(self.kubeconfig)
        self._spawn("kube-controller-manager", [
            str(bins / "kube-controller-manager"), f"--kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            "--controllers=*,-nodeipam", "--cluster-name=mainsail-testbed",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(node_bin / "kube-scheduler"), f"--kubeconfig={kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1",
        ])  # fmt: skip
        self._spawn("kubelet", [
            str(node_bin / "kubelet"), f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={kubeconfig}", f"--root-dir={self.dir / 'kubelet'}",
            f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ])  # fmt: skip
        self._spawn("kube-proxy", [
            str(node_bin / "kube-proxy"), f"--kubeconfig={kubeconfig}",
            "--proxy-mode=iptables", f"--cluster-cidr={POD_CIDR}",
            f"--hostname-override={NODE_NAME}", "--conntrack-max-per-core=0",
            "--healthz-bind-address=127.0.0.1:10256",
            "--metrics-bind-address=127.0.0.1:10249",
        ])  # fmt: skip
        self._spawn("coredns", [
            str(node_bin / "coredns"), "-conf", str(self.dir / "Corefile"),
        ])  # fmt: skip
        if self.kuberay:
            self.kubectl(
                "apply", "--server-side",
                *(arg for crd in self.binaries.kuberay_crds for arg in ("-f", str(crd))),
            )  # fmt: skip
            self._spawn(
                "kuberay-operator",
                [str(node_bin / "kuberay-operator"), "--enable-leader-election=false",
                 "--metrics-addr=127.0.0.1:8080", "--health-probe-bind-address=127.0.0.1:8082"],
                env={"KUBECONFIG": kubeconfig},
            )  # fmt: skip
        self.wait_for(self._node_ready, READY_TIMEOUT_S, f"node {NODE_NAME} Ready")
        self._wait_http("coredns", "http://127.0.0.1:8181/ready")
        self.wait_for(
            lambda: self.kubectl("get", "sa", "default", check=False).returncode == 0,
            READY_TIMEOUT_S,
            "ServiceAccount default/default",
        )
        if self.kuberay:
            self._wait_http("kuberay-operator", "http://127.0.0.1:8082/readyz")
        self.started_in = time.monotonic() - t0

    def _node_ready(self) -> bool:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise NodeError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
        out = self.kubectl(
            "get", "node", NODE_NAME, "-o",
            'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
            check=False,
        )  # fmt: skip
        return out.stdout.strip() == "True"

    def _wait_socket(self, name: str, path: Path) -> None:
        proc = self._procs[name]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            ok = _run(
                ["ctr", "--address", str(path), "version"], check=False, timeout=10
            ).returncode
            if ok == 0:
                return
            time.sleep(0.2)
        raise NodeError(f"{name} not serving on {path}:\n{self.log_tail(name)}")

    def _make_netns(self) -> None:
        ns = self.netns
        _run(["ip", "netns", "add", ns])
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            # The node IP lives on lo (no dummy driver here). Pods reach it through the bridge.
            ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo"],
            # ClusterIPs are DNAT'ed in OUTPUT/PREROUTING, but a local sender needs a route for
            # the first lookup (with the node IP as source, not 127.0.0.1). There is no default
            # route: any other destination fails at once.
            ["ip", "route", "add", SERVICE_CIDR, "dev", "lo", "src", NODE_IP],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"],
        ):
            _run(["ip", "netns", "exec", ns, *argv])
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(
            f"nameserver {DNS_IP}\nsearch default.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} "
            f"{CLUSTER_DOMAIN}\noptions ndots:5 timeout:2 attempts:2\n"
        )

    def _write_configs(self) -> None:
        d = self.dir
        pki = d / "pki"
        token = secrets.token_hex(16)
        (d / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
        (d / "tokens.csv").chmod(0o600)
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: testbed\n  cluster:\n    server: https://127.0.0.1:6443\n"
            f"    certificate-authority: {pki / 'ca.crt'}\n"
            f"users:\n- name: admin\n  user:\n    token: {token}\n"
            "contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: admin\n"
            "current-context: testbed\n"
        )
        self.kubeconfig.chmod(0o600)
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
              address = "{self.containerd_socket}"
            [ttrpc]
              address = "{self.containerd_socket}.ttrpc"
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
                    "name": self.cni_network,
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
            containerRuntimeEndpoint: unix://{self.containerd_socket}
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
                    kubeconfig {self.kubeconfig} testbed
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

    @property
    def cni_network(self) -> str:
        return f"mainsail-{self.id}"

    # -- stop
    def stop(self) -> None:
        """Tear everything down (see `teardown_instance`); the log dir is kept."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        teardown_instance(self.dir, self.binaries)
        for proc in self._procs.values():  # reap
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)


# --- teardown, also of a crashed instance ------------------------------------------------------


def _recorded_pid(instance: Path, name: str) -> tuple[int, int] | None:
    try:
        pid, start = (instance / "pids" / name).read_text().split()
        return int(pid), int(start)
    except (OSError, ValueError):
        return None


def _stop_recorded(instance: Path, name: str) -> None:
    rec = _recorded_pid(instance, name)
    if rec is not None:
        _signal_and_wait(*rec)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _shim_pids(socket: Path) -> list[int]:
    """containerd shims started for this instance: their argv names our containerd socket."""
    pids = []
    needle = str(socket).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-address" in argv and needle in argv and b"containerd-shim" in argv[0]:
            pids.append(int(entry.name))
    return pids


def _kill_tree(roots: list[int]) -> None:
    """SIGKILL the shims and every descendant (container processes), leaves first."""
    children = _children_map()
    order: list[tuple[int, int]] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        start = _start_time(pid)
        if start is not None:
            order.append((pid, start))
        stack.extend(children.get(pid, []))
    for pid, start in reversed(order):
        if _same_process(pid, start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and any(_same_process(p, s) for p, s in order):
        time.sleep(0.05)


def _ctr(socket: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return _run(["ctr", "--address", str(socket), "-n", "k8s.io", *args], check=False,
                timeout=timeout)  # fmt: skip


def _stop_containers(socket: Path) -> None:
    """Kill and delete every task and container of this containerd (namespace k8s.io)."""
    for task in _ctr(socket, "tasks", "ls", "-q").stdout.split():
        _ctr(socket, "tasks", "kill", "-a", "-s", "SIGKILL", task)
    for task in _ctr(socket, "tasks", "ls", "-q").stdout.split():
        _ctr(socket, "tasks", "delete", "-f", task)
    for container in _ctr(socket, "containers", "ls", "-q").stdout.split():
        _ctr(socket, "containers", "delete", container)


def owned_pod_netns(netns: str) -> list[str]:
    """The `cni-*` namespaces whose veth peer lives in our node namespace `netns`."""
    owned = []
    for path in sorted(NETNS_DIR.glob("cni-*")):
        ids = _run(["ip", "-n", path.name, "-j", "netns", "list-id"], check=False, timeout=10)
        if ids.returncode != 0 or not ids.stdout.strip():
            continue
        with contextlib.suppress(json.JSONDecodeError):
            if any(entry.get("name") == netns for entry in json.loads(ids.stdout)):
                owned.append(path.name)
    return owned


def mounts_under(prefix: Path) -> list[str]:
    """Mount points at or under prefix, deepest first (from /proc/self/mountinfo)."""
    base = str(prefix).rstrip("/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == base or point.startswith(base + "/"):
            points.append(point)
    return sorted(points, key=lambda p: (p.count("/"), p), reverse=True)


def teardown_instance(instance: Path, binaries: Binaries | None = None) -> None:
    """Remove everything an instance made, using only what it recorded in its directory."""
    try:
        owner = json.loads((instance / "owner.json").read_text())
    except (OSError, json.JSONDecodeError):
        owner = {}
    netns = owner.get("netns", instance.name)
    socket = instance / "containerd" / "containerd.sock"
    _stop_recorded(instance, "kubelet")
    container_ids = {
        p.name
        for p in (instance / "containerd/state/io.containerd.runtime.v2.task/k8s.io").glob("*")
    }
    rec = _recorded_pid(instance, "containerd")
    if rec is not None and _same_process(*rec) and socket.exists():
        container_ids |= set(_ctr(socket, "containers", "ls", "-q").stdout.split())
        _stop_containers(socket)
    _stop_recorded(instance, "containerd")
    _kill_tree(_shim_pids(socket))
    for cid in container_ids:  # the shims' sockets: containerd names them by address/ns/id
        digest = hashlib.sha256(os.path.join(str(socket), "k8s.io", cid).encode()).hexdigest()
        with contextlib.suppress(OSError):
            (SHIM_SOCKET_DIR / digest).unlink()
    pod_netns: list[str] = []
    if (NETNS_DIR / netns).exists():
        pod_netns = owned_pod_netns(netns)
        with contextlib.suppress(OSError):  # for a teardown cut short and retried
            (instance / "pod-netns").write_text("\n".join(pod_netns))
        if binaries is not None and (NETNS_DIR / netns).exists():
            _run(["nsenter", f"--net={NETNS_DIR / netns}", "--",
                  str(binaries.node_bin / "kube-proxy"), "--cleanup"],
                 check=False, timeout=30)  # fmt: skip
    else:
        with contextlib.suppress(OSError):
            pod_netns = (instance / "pod-netns").read_text().split()
    for name in pod_netns:
        _run(["ip", "netns", "delete", name], check=False)
    for name in ("kuberay-operator", "coredns", "kube-proxy", "kube-scheduler",
                 "kube-controller-manager", "kube-apiserver", "etcd"):  # fmt: skip
        _stop_recorded(instance, name)
    for point in mounts_under(instance):
        if _run(["umount", point], check=False).returncode != 0:
            _run(["umount", "-l", point], check=False)
    for cid in container_ids:  # empty cgroups runc left when its task was killed outright
        for cgroup in Path("/sys/fs/cgroup").glob(f"*/k8s.io/{cid}"):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
    if (NETNS_DIR / netns).exists():
        _run(["ip", "netns", "delete", netns], check=False)
    shutil.rmtree(Path("/etc/netns") / netns, ignore_errors=True)
    pod_logs = str(instance / "pod-logs")
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if os.readlink(link).startswith(pod_logs):
                link.unlink()
    results = Path("/var/lib/cni/results")  # libcni's cache: one file per attachment
    for result in results.glob(f"mainsail-{instance.name}-*"):
        result.unlink(missing_ok=True)
    for cid in container_ids:
        (results / f"cni-loopback-{cid}-lo").unlink(missing_ok=True)
    shutil.rmtree(instance, ignore_errors=True)


def cleanup_stale(base: Path | None = None) -> list[str]:
    """Tear down instances under base whose owner process is gone; returns their ids."""
    base = base or default_base_dir()
    if not base.is_dir():
        return []
    cleaned = []
    with (base / ".cleanup.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two starts never tear down the same leftover at once
        for instance in sorted(base.glob("msn-*")):
            try:
                owner = json.loads((instance / "owner.json").read_text())
                alive = _same_process(int(owner["pid"]), int(owner["start"]))
            except (OSError, ValueError, KeyError, json.JSONDecodeError):
                # owner.json is written right after mkdir (and removed last by its own
                # teardown): leave a dir that is new or already going away.
                try:
                    alive = time.time() - instance.stat().st_mtime < 30
                except OSError:
                    continue
            if not alive:
                teardown_instance(instance)
                cleaned.append(instance.name)
    return cleaned


def start_node(
    images: Sequence[Path | str] = (),
    kuberay: bool = False,
    base: Path | None = None,
    log_dir: Path | None = None,
    binaries: Binaries | None = None,
) -> Node:
    """Clean up crashed instances, then start a new node; tears down what it made on failure."""
    if problem := support_problem():
        raise NodeError(problem)
    base = base or default_base_dir()
    binaries = binaries or Binaries.ensure()
    cleanup_stale(base)
    node_id = f"msn-{secrets.token_hex(4)}"
    instance = base / node_id
    instance.mkdir(parents=True)
    instance.chmod(0o700)
    (instance / "owner.json").write_text(
        json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()), "netns": node_id})
    )
    log_dir = log_dir or instance / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    node = Node(id=node_id, dir=instance, binaries=binaries, log_dir=log_dir, kuberay=kuberay)
    try:
        node.start([Path(tar) for tar in images])
    except BaseException:
        node.stop()
        raise
    return node


@contextlib.contextmanager
def running_node(**kwargs: Any) -> Iterator[Node]:
    node = start_node(**kwargs)
    try:
        yield node
    finally:
        node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Bring up the test bed's node by hand.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a node, print how to reach it, wait for Ctrl-C")
    up.add_argument("--kuberay", action="store_true", help="also run the KubeRay operator")
    up.add_argument("--image", action="append", default=[], help="image tar to import")
    sub.add_parser("cleanup", help="tear down instances whose owner process is gone")
    sub.add_parser("prepare", help="build the binaries and the small images (no node)")
    args = parser.parse_args(argv)
    if args.cmd == "cleanup":
        print("cleaned:", " ".join(cleanup_stale()) or "nothing")
        return 0
    if args.cmd == "prepare":
        if problem := support_problem():
            print(f"node test bed: {problem}; not preparing", file=sys.stderr)
            return 0
        t0 = time.monotonic()
        binaries = Binaries.ensure()
        images = [pause_image(), busybox_image(), debian_python_image()]
        print(f"{binaries.node_bin}\n" + "\n".join(map(str, images)))
        print(f"prepared in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        return 0
    t0 = time.monotonic()
    node = start_node(images=args.image, kuberay=args.kuberay)
    try:
        print(textwrap.dedent(f"""\
            node {node.id} Ready in {time.monotonic() - t0:.1f} s (logs: {node.log_dir})
              sudo ip netns exec {node.netns} \\
                {node.binaries.server_bin}/kubectl --kubeconfig {node.kubeconfig} get pods -A
            Ctrl-C tears it down."""), flush=True)  # fmt: skip
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        t1 = time.monotonic()
        node.stop()
        print(f"torn down in {time.monotonic() - t1:.1f} s")
    return 0
