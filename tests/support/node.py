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

from support.node_config import (
    CLUSTER_DOMAIN,
    NETNS_DIR,
    NODE_IP,
    NODE_NAME,
    POD_CIDR,
    READY_TIMEOUT_S,
    SERVICE_CIDR,
    TESTBED,
    cni_network,
    default_base_dir,
    make_pki,
    netns_resolv_conf,
    write_configs,
)
from support.node_images import busybox_image, debian_python_image, pause_image
from support.node_lifecycle import (
    cleanup_stale,
    die_with_parent,
    enter_netns,
    node_env,
    run,
    start_time,
    teardown_instance,
)

T = TypeVar("T")


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
            env=node_env(KUBECONFIG=str(self.kubeconfig), **(env or {})),
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
                initializer=enter_netns,
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
        run(
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
        out = run(
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
                start_new_session=True, preexec_fn=die_with_parent,
                env=node_env(PATH=path, **(env or {})),
            )  # fmt: skip
        start = None
        for _ in range(100):
            start = start_time(proc.pid)
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
        make_pki(self.dir / "pki")
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
            ok = run(["ctr", "--address", str(path), "version"], check=False, timeout=10).returncode
            if ok == 0:
                return
            time.sleep(0.2)
        raise NodeError(f"{name} not serving on {path}:\n{self.log_tail(name)}")

    def _make_netns(self) -> None:
        ns = self.netns
        run(["ip", "netns", "add", ns])
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
            run(["ip", "netns", "exec", ns, *argv])
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(netns_resolv_conf())

    def _write_configs(self) -> None:
        write_configs(self.dir)

    @property
    def cni_network(self) -> str:
        return cni_network(self.dir)

    # -- stop
    def stop(self) -> None:
        """Tear everything down (see `teardown_instance`); the log dir is kept."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        teardown_instance(self.dir, self.binaries.node_bin)
        for proc in self._procs.values():  # reap
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)


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
        json.dumps({"pid": os.getpid(), "start": start_time(os.getpid()), "netns": node_id})
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
