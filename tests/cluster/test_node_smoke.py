"""The test bed's node runs real pods: scheduling, CNI, Services through kube-proxy, CoreDNS,
ServiceAccount tokens through the `kubernetes` Service, and a teardown that leaves nothing.

Every client runs inside the node's network namespace (or in a pod): nothing here talks to an
address outside loopback and the namespaces the test bed made.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.node import Node, running_node
from support.node_config import NETNS_DIR, NODE_NAME, SHIM_SOCKET_DIR
from support.node_lifecycle import cleanup_stale, mounts_under, owned_pod_netns

pytestmark = pytest.mark.cluster

BUSYBOX = "mainsail/busybox:testbed"
PYTHON = "mainsail/debian-python:testbed"


def _web(namespace: str) -> str:
    """Two busybox httpd pods answering with their own hostname, and a ClusterIP Service."""
    return textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web, namespace: {namespace}}}
        spec:
          replicas: 2
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: httpd
                image: {BUSYBOX}
                imagePullPolicy: Never
                command: ["sh", "-c", "hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
                ports: [{{containerPort: 8080}}]
                readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: {namespace}}}
        spec:
          selector: {{app: web}}
          ports: [{{port: 80, targetPort: 8080}}]
        """)


def _job(namespace: str, name: str, image: str, command: list[str]) -> str:
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "backoffLimit": 0,
                "activeDeadlineSeconds": 120,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "client",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "command": command,
                            }
                        ],
                    }
                },
            },
        }
    )


def _run_job(node: Node, namespace: str, name: str, image: str, command: list[str]) -> str:
    """Run a Job to completion and return its log; fails with the log if the Job failed."""
    node.kubectl("apply", "-f", "-", input=_job(namespace, name, image, command))
    deadline = time.monotonic() + 120
    status: dict[str, int] = {}
    while time.monotonic() < deadline:
        status = json.loads(node.kubectl("get", "job", name, "-n", namespace, "-o", "json").stdout)[
            "status"
        ]
        if status.get("succeeded") or status.get("failed"):
            break
        time.sleep(0.5)
    log = node.kubectl("logs", f"job/{name}", "-n", namespace, check=False)
    assert status.get("succeeded") == 1, f"job {name}: {status}\n{log.stdout}{log.stderr}"
    return log.stdout


def _deploy_web(node: Node, namespace: str) -> set[str]:
    node.kubectl("apply", "-f", "-", input=_web(namespace))
    node.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=120s",
                 timeout=130)  # fmt: skip
    pods = node.kubectl(
        "get", "pods", "-n", namespace, "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"
    ).stdout.split()
    assert len(pods) == 2
    return set(pods)


def _answers(node: Node, ip: str, pods: set[str], within_s: float = 90.0) -> set[str]:
    """Hostnames answering on http://ip/ from the node's namespace, until all of pods answered
    or `within_s` passed. Bounded by time, not by attempts: while kube-proxy has programmed
    only the first endpoint every fetch succeeds at once, and a count of attempts would be
    spent before the second endpoint is in (seen under load)."""

    def fetch() -> str | None:
        try:
            status, body = node.http_get(f"http://{ip}/", timeout=3)
        except OSError:
            return None
        return body.decode().strip() if status == 200 else None

    seen: set[str] = set()
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        name = fetch()
        if name is not None:
            seen.add(name)
        if seen >= pods:
            break
        time.sleep(0.2)
    return seen


def test_node_is_ready_with_our_versions(node_cluster: Node) -> None:
    node = json.loads(node_cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.35.4"
    assert info["kubeProxyVersion"] in ("", "v1.35.4")
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    assert "docker.io/mainsail/pause:testbed" in node_cluster.images()


def test_the_node_namespace_has_no_route_out_of_the_machine(node_cluster: Node) -> None:
    """Confinement: the node's namespace routes only its loopback (node IP, Service CIDR) and,
    once a pod runs, the CNI bridge; no default route, so an address that is not the test
    bed's own is unreachable from it (a kernel route lookup: no packet is sent)."""
    for family in ("-4", "-6"):
        routes = node_cluster.run_in_netns(["ip", family, "route", "show", "table", "all"]).stdout
        assert not [r for r in routes.splitlines() if r.startswith("default")], routes
    for outside in ("192.0.2.1", "2001:db8::1"):  # documentation ranges, never a real host
        lookup = node_cluster.run_in_netns(["ip", "route", "get", outside], check=False)
        assert lookup.returncode != 0 and "unreachable" in lookup.stderr.lower(), lookup


def test_service_answers_from_both_pods_by_ip_and_by_name(
    node_cluster: Node, node_namespace: str
) -> None:
    pods = _deploy_web(node_cluster, node_namespace)
    ip = node_cluster.service_ip(node_namespace, "web")

    # From the node's namespace (the host test's own Python, on a thread that joined it).
    assert _answers(node_cluster, ip, pods) == pods

    # From a pod, by name through CoreDNS (short name and FQDN), until both pods answered.
    script = textwrap.dedent(f"""\
        seen=""
        for i in $(seq 300); do
          for host in web web.{node_namespace}.svc.cluster.local; do
            name=$(timeout 5 wget -qO- http://$host/) || {{ sleep 1; continue; }}
            case " $seen " in *" $name "*) ;; *) seen="$seen $name";; esac
          done
          [ $(echo $seen | wc -w) -ge 2 ] && break
          sleep 0.2
        done
        echo $seen
        """)
    out = _run_job(node_cluster, node_namespace, "dns-client", BUSYBOX, ["sh", "-c", script])
    assert set(out.split()) == pods

    # And from the node's namespace by name (its resolv.conf points at CoreDNS).
    looked_up = node_cluster.run_in_netns(
        [sys.executable, "-c",
         f"import socket; print(socket.gethostbyname('web.{node_namespace}.svc.cluster.local'))"]
    ).stdout.strip()  # fmt: skip
    assert looked_up == ip


def test_pod_reaches_api_server_with_its_service_account(
    node_cluster: Node, node_namespace: str
) -> None:
    """In-cluster config as a client library uses it: KUBERNETES_SERVICE_* env, the
    `kubernetes.default.svc` name, the projected token, TLS verified against ca.crt."""
    script = textwrap.dedent("""\
        import json, os, ssl, urllib.error, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        port = os.environ["KUBERNETES_SERVICE_PORT"]
        url = f"https://kubernetes.default.svc:{port}/apis/authentication.k8s.io/v1/selfsubjectreviews"
        ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
        body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        def review(headers):
            headers = {"Content-Type": "application/json", **headers}
            req = urllib.request.Request(url, data=body.encode(), headers=headers)
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
                    return json.load(resp)["status"]["userInfo"]["username"]
            except urllib.error.HTTPError as exc:
                return f"HTTP {exc.code}"
        token = open(f"{sa}/token").read()
        print(review({"Authorization": f"Bearer {token}"}))
        print(review({}))
        print(os.environ["KUBERNETES_SERVICE_HOST"])
        """)
    out = _run_job(node_cluster, node_namespace, "whoami", PYTHON, ["python3", "-c", script])
    with_token, without_token, host = out.split("\n")[:3]
    assert with_token == f"system:serviceaccount:{node_namespace}:default"
    assert without_token in ("HTTP 401", "HTTP 403")
    assert host == node_cluster.service_ip("default", "kubernetes")


def _host_state() -> dict[str, object]:
    """What a node could leave behind on the host, outside its own namespaces."""

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    links = json.loads(run("ip", "-j", "link", "show"))
    return {
        "links": sorted(link["ifname"] for link in links),
        "iptables": sorted(
            line for line in run("iptables-save").splitlines() if not line.startswith("#")
        ),
        "netns": sorted(p.name for p in NETNS_DIR.glob("*")),
    }


def _assert_gone(
    node_id: str, instance: Path, pod_netns: list[str], before: dict[str, object]
) -> None:
    """Nothing of the instance is left; the host's links and iptables are as before."""
    after = _host_state()
    assert after["links"] == before["links"]
    assert after["iptables"] == before["iptables"]
    assert pod_netns and node_id not in after["netns"]  # type: ignore[operator]
    assert not set(pod_netns) & set(after["netns"])  # type: ignore[call-overload]
    assert not mounts_under(instance)
    assert not instance.exists()
    assert not (Path("/etc/netns") / node_id).exists()
    for link in Path("/var/log/containers").glob("*.log"):
        assert str(instance) not in os.readlink(link)
    shims = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(instance) not in shims


def test_second_node_runs_beside_and_tears_down_to_nothing(
    node_cluster: Node, node_namespace: str, tmp_path: Path
) -> None:
    pods = _deploy_web(node_cluster, node_namespace)
    before = _host_state()
    with running_node(log_dir=tmp_path / "logs") as second:
        assert second.netns != node_cluster.netns
        second.create_namespace("side")
        second_pods = _deploy_web(second, "side")
        pod_netns = owned_pod_netns(second.netns)
        assert len(pod_netns) == 2
        containers = subprocess.run(
            ["ctr", "--address", str(second.containerd_socket), "-n", "k8s.io",
             "containers", "ls", "-q"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        assert len(containers) == 4  # two sandboxes, two httpd
        assert mounts_under(second.dir)
        # Same CIDRs, separate namespaces: the first node's Service still reaches its own pods.
        ip = node_cluster.service_ip(node_namespace, "web")
        assert _answers(node_cluster, ip, pods) == pods
        second_ip = second.service_ip("side", "web")
        assert _answers(second, second_ip, second_pods) == second_pods
        node_id, instance, socket = second.id, second.dir, second.containerd_socket
        live = {p.name for p in SHIM_SOCKET_DIR.glob("*")}
        assert {
            hashlib.sha256(os.path.join(str(socket), "k8s.io", cid).encode()).hexdigest()
            for cid in containers
        } & live, "the shim socket naming changed: update teardown_instance"
    _assert_gone(node_id, instance, pod_netns, before)
    # No libcni cache entry and no shim socket (named by containerd's address/ns/id hash).
    results = [p for p in Path("/var/lib/cni/results").glob("*") if p.is_file()]
    assert not [p for p in results if any(cid in p.read_text() for cid in containers)]
    sockets = {
        hashlib.sha256(os.path.join(str(socket), "k8s.io", cid).encode()).hexdigest()
        for cid in containers
    }
    assert not sockets & {p.name for p in SHIM_SOCKET_DIR.glob("*")}
    # The first node is untouched.
    ip = node_cluster.service_ip(node_namespace, "web")
    assert node_cluster.http_get(f"http://{ip}/")[1].decode().strip() in pods


_CRASHING_OWNER = textwrap.dedent("""\
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from support.node import start_node
    node = start_node(log_dir=Path({logs!r}))
    node.create_namespace("crash")
    node.kubectl("create", "deployment", "sleeper", "-n", "crash", "--image={image}",
                 "--", "sleep", "3600")
    node.kubectl("rollout", "status", "deployment/sleeper", "-n", "crash", "--timeout=120s",
                 timeout=130)
    print(node.id, node.dir, flush=True)
    time.sleep(600)
    """)


def test_instance_of_a_killed_owner_is_cleaned_by_the_next_start(
    node_cluster: Node, tmp_path: Path
) -> None:
    before = _host_state()
    tests_dir = str(Path(__file__).resolve().parents[1])
    code = _CRASHING_OWNER.format(tests=tests_dir, logs=str(tmp_path / "logs"), image=BUSYBOX)
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().split()
        assert len(line) == 2, (tmp_path / "logs").iterdir()
        node_id, instance = line[0], Path(line[1])
        pod_netns = owned_pod_netns(node_id)
        assert len(pod_netns) >= 1
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    # Its daemons died with it (PDEATHSIG); the shim, the pod and the namespaces did not, until
    # the next start's cleanup (another test run's node start may get there first: same code).
    cleaned = cleanup_stale()
    assert node_id in cleaned or not instance.exists()
    _assert_gone(node_id, instance, pod_netns, before)
    assert node_cluster.kubectl("get", "node", NODE_NAME).returncode == 0
