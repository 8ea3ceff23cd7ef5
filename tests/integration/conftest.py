"""A real Kubernetes API server for integration tests: etcd + kube-apiserver on loopback.

Our machines have no container engine, so instead of kind we run what controller-runtime's
envtest runs: the real `kube-apiserver` and `etcd` as plain processes (see docs/testbed.md).
That gives real CRD schemas and CEL validation, subresources, RBAC and watches; there is no
controller-manager, so namespaces never finish deleting and nothing is garbage-collected.
Each test gets its own namespace and never waits for cascades.

The binaries come from `deploy/testbed/ensure.sh` (cached by version; a cold build takes tens
of minutes), which runs once at collection time when a selected test needs the test bed, so
that no per-test timeout covers the build.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.operator_harness import ROOT, OperatorProcess, install_crds

ENSURE_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "testbed" / "ensure.sh"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
_SERVICE_CIDR = "10.0.0.0/16"


@dataclass(frozen=True)
class KubeTestbed:
    """A running API server: where it is, how to authenticate, and the client binaries."""

    kubeconfig: Path
    server: str
    token: str
    bin_dir: Path
    ca_file: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for child processes: KUBECONFIG set, kubectl and helm first on PATH."""
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the test bed; raises CalledProcessError (with stderr) if check."""
        cmd = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc


def _ensure_binaries() -> Path:
    """Run ensure.sh (a no-op when the cache is warm) and return the bin dir it prints."""
    env = {**os.environ, "MAINSAIL_PYTHON": os.environ.get("MAINSAIL_PYTHON", sys.executable)}
    proc = subprocess.run(
        ["bash", str(ENSURE_SCRIPT)], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{ENSURE_SCRIPT} failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build or locate the binaries before any test runs, only if a kube test was selected."""
    if not any("kube_testbed" in getattr(item, "fixturenames", ()) for item in items):
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    check = subprocess.run(["bash", str(ENSURE_SCRIPT), "--check"], capture_output=True)
    if check.returncode != 0 and reporter is not None:
        reporter.write_line(f"kube test bed: building binaries with {ENSURE_SCRIPT} (5-20 min)")
    try:
        _ensure_binaries()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        # Not fatal here: the kube_testbed fixture retries and fails the tests that need it.
        if reporter is not None:
            reporter.write_line(f"kube test bed: {exc}", red=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    """Child-side: get SIGKILL if pytest dies without running teardown (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _spawn(cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own process group, output to a log file."""
    with log.open("wb") as out:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the process group, then kill it if it lingers."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


def _wait_ready(
    url: str,
    proc: subprocess.Popen[bytes],
    log: Path,
    headers: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """Poll url until it answers 200 'ok', the process exits, or READY_TIMEOUT_S passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=5, context=ssl_context) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{url} not ready (exit={proc.poll()}, last error={last}):\n{tail}")


def _write_signing_key(path: Path) -> None:
    """One RSA key signs and verifies service-account tokens."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        subprocess.run(
            ["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True
        )
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _kubeconfig(server: str, ca_file: Path, token: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: testbed\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca_file}\n"
        f"users:\n- name: admin\n  user:\n    token: {token}\n"
        "contexts:\n- name: testbed\n  context:\n    cluster: testbed\n    user: admin\n"
        "current-context: testbed\n"
    )


@pytest.fixture(scope="session")
def kube_testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTestbed]:
    """etcd + kube-apiserver on free loopback ports, torn down at session end."""
    bin_dir = _ensure_binaries()
    root = tmp_path_factory.mktemp("kube-testbed")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        etcd_port, peer_port = _free_port(), _free_port()
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        etcd_log = root / "etcd.log"
        etcd = _spawn(
            [
                str(bin_dir / "etcd"),
                f"--data-dir={root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            etcd_log,
        )
        procs.append(etcd)
        _wait_ready(f"{etcd_url}/health", etcd, etcd_log)

        token = secrets.token_hex(16)
        (root / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
        sa_key = root / "sa.key"
        _write_signing_key(sa_key)
        cert_dir = root / "certs"
        port = _free_port()
        server = f"https://127.0.0.1:{port}"
        api_log = root / "kube-apiserver.log"
        api = _spawn(
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={cert_dir}",
                f"--token-auth-file={root / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={server}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={_SERVICE_CIDR}",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--endpoint-reconciler-type=none",
            ],
            api_log,
        )
        procs.append(api)
        ca_file = cert_dir / "apiserver.crt"
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE
        headers = {"Authorization": f"Bearer {token}"}
        _wait_ready(f"{server}/readyz", api, api_log, headers, insecure)
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(_kubeconfig(server, ca_file, token))
        kubeconfig.chmod(0o600)
        yield KubeTestbed(
            kubeconfig=kubeconfig, server=server, token=token, bin_dir=bin_dir, ca_file=ca_file
        )
    finally:
        for proc in reversed(procs):
            _stop(proc)


def _namespace_name(node_name: str) -> str:
    """A DNS-1123 label from the test name plus a random suffix."""
    base = re.sub(r"[^a-z0-9-]+", "-", node_name.lower()).strip("-")[:50].strip("-")
    return f"{base or 't'}-{secrets.token_hex(3)}"


@pytest.fixture
def kube_namespace(kube_testbed: KubeTestbed, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test; deletion is requested but not awaited (no GC here)."""
    name = _namespace_name(request.node.name)
    kube_testbed.kubectl("create", "namespace", name)
    yield name
    kube_testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def kube_api_client(kube_testbed: KubeTestbed) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` for the test bed's admin user."""
    from kubernetes import config

    # kubernetes ships no type hints.
    client = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kube_testbed.kubeconfig)
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def operator_identity(
    kube_testbed: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Path]]:
    """The chart's ServiceAccount and RBAC, applied; a kubeconfig carrying that SA's token."""
    install_crds(kube_testbed)
    suffix = secrets.token_hex(3)
    namespace, release = f"mainsail-op-{suffix}", f"op-{suffix}"
    kube_testbed.kubectl("create", "namespace", namespace)
    helm = str(kube_testbed.bin_dir / "helm")
    rendered = subprocess.run(
        [helm, "template", release, str(ROOT / "charts/mainsail"), "--namespace", namespace,
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True, timeout=60, env=kube_testbed.env,
    ).stdout  # fmt: skip
    kube_testbed.kubectl("apply", "-n", namespace, "-f", "-", input=rendered)
    account = f"{release}-mainsail-operator"
    token = kube_testbed.kubectl(
        "create", "token", account, "-n", namespace, "--duration=2h"
    ).stdout.strip()
    admin = yaml.safe_load(kube_testbed.kubeconfig.read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator"
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    path.chmod(0o600)
    yield namespace, account, path
    kube_testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    operator_identity: tuple[str, str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator-log") / "operator.log"
    process = OperatorProcess(operator_identity[2], log)
    process.start()
    yield process
    process.stop()
    assert "Traceback" not in log.read_text(), log.read_text()[-4000:]
