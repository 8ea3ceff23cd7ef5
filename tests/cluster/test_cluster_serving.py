"""The cluster path serves: `helm install` the chart, `kubectl apply` the tiny example, and the
`openai` SDK, pointed at the router Service, gets the same tokens `mainsail up` gives.

Everything is real: the node's kubelet runs the operator, router, Redis and Ray pods from the
images `deploy/images/build.py` builds (imported into the node's containerd, pulled `Never`),
KubeRay makes the RayCluster's pods, the Ray head's supervisor starts one worker per worker pod
(each generates the tiny checkpoint on its pod), the workers register with the router Service,
and status turns Ready only once they have. The only edit to `deploy/examples/tiny.yaml` is the
pool's CPU request, so that its pods fit the test bed's two-core node.

Images: the cached tars of the current sources (`scripts/test.sh` builds them before pytest);
without them the module skips, unless `MAINSAIL_IMAGES_REQUIRED=1`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.chart_images import chart_image as _image
from support.chart_images import helm_image_values as _helm_values
from support.greedy import ask_greedy
from support.node import Node
from support.stack import running_stack

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "tiny.yaml"
READY_TIMEOUT_S = 1200.0
PROMPT = "The harbour master counted the sails"
MAX_TOKENS = 24


def _diagnostics(node: Node, ns: str) -> str:
    """What a person would look at when the deployment does not become Ready."""
    parts = []
    for args in (
        ("get", "pods", "-A", "-o", "wide"),
        ("get", "modeldeployment", "tiny", "-n", ns, "-o", "jsonpath={.status}"),
        ("get", "events", "-n", ns, "--sort-by=.lastTimestamp"),
    ):
        parts.append(node.kubectl(*args, check=False).stdout[-4000:])
    pods = node.kubectl("get", "pods", "-n", ns, "-o", "name", check=False).stdout.split()
    for pod in pods:
        logs = node.kubectl("logs", "-n", ns, pod, "--all-containers", "--tail=40", check=False)
        parts.append(f"--- {pod}\n{logs.stdout[-3000:]}{logs.stderr[-500:]}")
    return "\n".join(parts)


def _credentials(node: Node, ns: str) -> tuple[str, str]:
    """(a client API key, the admin token) from the Secret the operator issued (auth is on by
    default on a cluster)."""
    secret = json.loads(
        node.kubectl("get", "secret", "-n", ns, "tiny-worker-credential", "-o", "json").stdout
    )
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return data["apiKeys"].split(",")[0].strip(), data["adminToken"].strip()


def _ask(base_url: str, api_key: str = "none") -> tuple[str, str, int]:
    """(non-streamed text, streamed text joined, completion tokens) of the greedy request."""
    return ask_greedy(base_url, api_key, "tiny-llama", PROMPT, MAX_TOKENS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, int]:
    """What `mainsail up -f deploy/examples/tiny.yaml` answers on this machine."""
    workdir = tmp_path_factory.mktemp("up")
    args = ["-f", str(EXAMPLE), "--http-port", "0", "--grpc-port", "0"]
    with running_stack(workdir, args) as stack:
        return _ask(stack["openai_base_url"])


@pytest.fixture(scope="module")
def deployed(node_cluster: Node) -> Iterator[tuple[Node, str]]:
    """The chart installed and the tiny example applied and Ready; (node, namespace)."""
    node = node_cluster
    images = {name: _image(name) for name in ("operator", "router", "worker", "redis")}
    for info in images.values():
        node.ensure_image(info["tar"])
    release, ns = "mainsail", f"tiny-{os.getpid()}"
    node.create_namespace(ns)
    node.helm(
        "install", release, str(ROOT / "charts/mainsail"), "--namespace", ns,
        *_helm_values(images), "--wait", "--timeout", "10m", timeout=900,
    )  # fmt: skip
    md = yaml.safe_load(EXAMPLE.read_text())
    md["spec"]["pools"]["unified"]["resources"] = {"cpu": "250m", "memory": "3Gi"}
    node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(md))
    started = time.monotonic()
    try:
        node.kubectl(
            "wait", "-n", ns, "--for=condition=Ready", "modeldeployment/tiny",
            f"--timeout={int(READY_TIMEOUT_S)}s", timeout=READY_TIMEOUT_S + 30,
        )  # fmt: skip
    except subprocess.CalledProcessError:
        pytest.fail(f"tiny not Ready after {READY_TIMEOUT_S:g} s:\n{_diagnostics(node, ns)}")
    print(f"apply -> Ready: {time.monotonic() - started:.1f} s")
    yield node, ns
    node.kubectl("delete", "-n", ns, "modeldeployment", "tiny", "--wait=false", check=False)
    node.helm("uninstall", release, "--namespace", ns, check=False)
    node.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_apply_gives_the_tokens_mainsail_up_gives(
    deployed: tuple[Node, str], reference: tuple[str, str, int]
) -> None:
    """THE proof: on a real node, the router Service answers the `openai` SDK, streamed and
    not, with exactly `mainsail up`'s greedy tokens, served by workers that registered under
    their pods' names; `kubectl get modeldeployments` says Ready."""
    node, ns = deployed
    ip = node.service_ip(ns, "tiny-router")
    key, admin = _credentials(node, ns)
    whole, streamed, tokens = node.in_netns(_ask, f"http://{ip}:8000/v1", key, timeout=300)
    assert (whole, streamed, tokens) == reference
    assert whole == streamed and tokens == MAX_TOKENS
    workers = _registered(node, ip, admin)
    pods = _worker_pods(node, ns)
    assert workers == pods and len(pods) == 2
    printed = node.kubectl("get", "modeldeployments", "-n", ns).stdout.splitlines()
    assert printed[1].split()[:3] == ["tiny", "tiny-llama", "1/1"]
    assert "DeploymentReady" in printed[1]


def _stream_text(base_url: str, api_key: str, prompt: str, max_tokens: int) -> str:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)
    parts = client.completions.create(
        model="tiny-llama", prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    return "".join(p.choices[0].text for p in parts if p.choices)


def _worker_pods(node: Node, ns: str) -> set[str]:
    """The unified worker pods that are not terminating."""
    selector = "mainsail.dev/role=unified,app.kubernetes.io/component=worker"
    items = json.loads(node.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)
    return {
        p["metadata"]["name"] for p in items["items"] if not p["metadata"].get("deletionTimestamp")
    }


def _registered(node: Node, ip: str, admin: str) -> set[str]:
    """Worker ids registered with the router (its admin API, with the admin token)."""

    def get() -> set[str]:
        request = urllib.request.Request(
            f"http://{ip}:8000/workers", headers={"Authorization": f"Bearer {admin}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return {w["id"] for w in json.loads(resp.read())["data"]}

    return node.in_netns(get, timeout=30)


def _serving(node: Node, ip: str, admin: str) -> list[str]:
    """Workers with a request outstanding (the router's admin API)."""

    def get() -> list[str]:
        request = urllib.request.Request(
            f"http://{ip}:8000/workers", headers={"Authorization": f"Bearer {admin}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return [w["id"] for w in json.loads(resp.read())["data"] if w["outstanding"]]

    return node.in_netns(get, timeout=30)


def test_deleting_a_worker_pod_mid_stream_costs_the_stream_nothing(
    deployed: tuple[Node, str],
) -> None:
    """Delete the pod whose worker serves a greedy stream: the router continues the request on
    the other worker and the client gets exactly the undisturbed tokens; KubeRay brings a pod
    back and its worker registers."""
    node, ns = deployed
    ip = node.service_ip(ns, "tiny-router")
    base = f"http://{ip}:8000/v1"
    key, admin = _credentials(node, ns)
    prompt, max_tokens = "Once upon a time, in a harbour full of sails", 600
    undisturbed = node.in_netns(_stream_text, base, key, prompt, max_tokens, timeout=300)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            node.in_netns, _stream_text, base, key, prompt, max_tokens, timeout=300
        )
        victims: list[str] = []

        def found() -> bool:
            victims[:] = _serving(node, ip, admin)
            return bool(victims) or running.done()

        node.wait_for(found, timeout=60, what="the stream's worker")
        assert victims, "the stream finished before its worker could be found"
        node.kubectl("delete", "pod", "-n", ns, victims[0], "--wait=false")
        assert running.result(timeout=320) == undisturbed

    def two_again() -> bool:
        pods = _worker_pods(node, ns)
        return len(pods) == 2 and victims[0] not in pods and _registered(node, ip, admin) == pods

    node.wait_for(two_again, timeout=600, what="a replacement pod's worker registered")


def test_kubectl_scale_adds_a_serving_worker_and_scaling_down_drains_it(
    deployed: tuple[Node, str],
) -> None:
    """`kubectl scale servingpool --replicas 3`: a third pod, a third registered worker; back to
    2 while a stream runs: the operator drains the leaving worker first, so the stream
    completes with exactly the undisturbed tokens."""
    node, ns = deployed
    ip = node.service_ip(ns, "tiny-router")
    base = f"http://{ip}:8000/v1"
    key, admin = _credentials(node, ns)
    node.kubectl("scale", "-n", ns, "servingpool", "tiny-unified", "--replicas=3")

    def three() -> bool:
        workers = _registered(node, ip, admin)
        return len(workers) == 3 and workers == _worker_pods(node, ns)

    node.wait_for(three, timeout=600, what="a third worker registered under its pod's name")
    prompt, max_tokens = "A long voyage along the coast", 400
    undisturbed = node.in_netns(_stream_text, base, key, prompt, max_tokens, timeout=300)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            node.in_netns, _stream_text, base, key, prompt, max_tokens, timeout=300
        )
        time.sleep(1.0)
        node.kubectl("scale", "-n", ns, "servingpool", "tiny-unified", "--replicas=2")
        assert running.result(timeout=320) == undisturbed

    def back_to_two() -> bool:
        pods = _worker_pods(node, ns)
        return len(pods) == 2 and _registered(node, ip, admin) == pods

    node.wait_for(back_to_two, timeout=300, what="back to two workers")
    events = node.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.name=tiny", "-o", "json"
    ).stdout
    assert any(e["reason"] == "Drained" for e in json.loads(events)["items"])
