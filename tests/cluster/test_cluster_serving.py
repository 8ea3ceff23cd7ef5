"""The cluster path serves: `helm install` the chart, `kubectl apply` the tiny example, and the
`openai` SDK, pointed at the router Service, gets the same tokens `mainsail up` gives.

Everything is real: the node's kubelet runs the operator, router, Redis and Ray pods from the
images `deploy/images/build.py` builds (imported into the node's containerd, pulled `Never`),
KubeRay makes the RayCluster's pods, the Ray head's supervisor starts one worker per worker pod
(each generates the tiny checkpoint on its pod), the workers register with the router Service,
and status turns Ready only once they have. The only edit to `deploy/examples/tiny.yaml` is the
pool's CPU request (100m), so that its pods — and, in the router-replicas test, a second router
pod's fixed 500m — fit the test bed's two-core node.

Images: the cached tars of the current sources (`scripts/test.sh` builds them before pytest);
without them the module skips, unless `MAINSAIL_IMAGES_REQUIRED=1`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.greedy import ask_greedy
from support.node import Node, NodeError
from support.node_deploy import (
    READY_TIMEOUT_S,
    apply_ready,
    client_key,
    credentials,
    delete_deployment,
    diagnostics,
    events,
    install_chart,
    worker_pods,
    workers,
)
from support.operator_harness import without_deployment_writes
from support.stack import running_stack

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(2700)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "examples" / "tiny.yaml"
PROMPT = "The harbour master counted the sails"
MAX_TOKENS = 24


def _credentials(node: Node, ns: str) -> tuple[str, str]:
    """(a client API key, the admin token) from the Secret the operator issued (auth is on by
    default on a cluster)."""
    secret = credentials(node, ns, "tiny")
    return client_key(secret), secret["adminToken"].strip()


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
    release, ns = "mainsail", f"tiny-{os.getpid()}"
    node.create_namespace(ns)
    install_chart(node, ns, release=release)
    md = yaml.safe_load(EXAMPLE.read_text())
    # 100m: with the operator (100m), Redis and the Ray head (250m each) and two routers (500m
    # each, not settable in the spec) two or three workers still fit the 2-core node.
    md["spec"]["pools"]["unified"]["resources"] = {"cpu": "100m", "memory": "3Gi"}
    print(f"apply -> Ready: {apply_ready(node, ns, md):.1f} s")
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
    return set(worker_pods(node, ns))


def _registered(node: Node, ip: str, admin: str) -> set[str]:
    """Worker ids registered with the router (its admin API, with the admin token)."""
    return set(workers(node, ip, admin))


def _serving(node: Node, ip: str, admin: str) -> list[str]:
    """Workers with a request outstanding (the router's admin API)."""
    return [w for w, entry in workers(node, ip, admin).items() if entry["outstanding"]]


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
    assert any(e["reason"] == "Drained" for e in events(node, ns, "tiny"))


ROUTER = "app.kubernetes.io/component=router"


def _ready_router_ips(node: Node, ns: str) -> dict[str, str]:
    """Pod name -> IP of tiny's router pods that are Ready and not terminating."""
    items = json.loads(node.kubectl("get", "pods", "-n", ns, "-l", ROUTER, "-o", "json").stdout)
    return {
        p["metadata"]["name"]: p["status"]["podIP"]
        for p in items["items"]
        if not p["metadata"].get("deletionTimestamp")
        and p["status"].get("podIP")
        and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in p["status"].get("conditions", [])
        )
    }


def _registered_or_none(node: Node, ip: str, admin: str) -> set[str] | None:
    """`_registered`, or None while that router does not answer yet."""
    try:
        return _registered(node, ip, admin)
    except (OSError, NodeError):
        return None


def test_two_router_replicas_each_have_every_worker_and_serve_the_same_tokens(
    deployed: tuple[Node, str], reference: tuple[str, str, int]
) -> None:
    """`spec.router.replicas: 2` on the running deployment: a second router pod starts, the
    workers find it through the headless `tiny-router-peers` Service and register with it too,
    so EACH router pod (reached by its pod IP, not the Service) lists every worker pod and
    answers the greedy request with exactly `mainsail up`'s tokens."""
    node, ns = deployed
    key, admin = _credentials(node, ns)
    patch = json.dumps({"spec": {"router": {"replicas": 2}}})
    node.kubectl("patch", "-n", ns, "modeldeployment", "tiny", "--type=merge", "-p", patch)
    try:
        routers: dict[str, str] = {}

        def both_have_every_worker() -> bool:
            routers.clear()
            routers.update(_ready_router_ips(node, ns))
            pods = _worker_pods(node, ns)
            return (
                len(routers) == 2
                and len(pods) == 2
                and all(_registered_or_none(node, ip, admin) == pods for ip in routers.values())
            )

        try:
            node.wait_for(both_have_every_worker, timeout=600,
                          what="two Ready router pods, each with every worker")  # fmt: skip
        except NodeError:
            print(diagnostics(node, ns, "tiny"))
            raise
        pdb = node.kubectl("get", "poddisruptionbudgets", "-n", ns, "-o", "name").stdout
        assert "tiny-router" in pdb
        for pod, ip in sorted(routers.items()):
            answer = node.in_netns(_ask, f"http://{ip}:8000/v1", key, timeout=300)
            assert answer == reference, f"router pod {pod} ({ip})"
    finally:  # back to one router: the next test's deployment needs the CPU
        patch = json.dumps({"spec": {"router": {"replicas": 1}}})
        node.kubectl("patch", "-n", ns, "modeldeployment", "tiny", "--type=merge", "-p", patch,
                     check=False)  # fmt: skip


# --- A second deployment: operator restarted mid-reconcile, model on a PVC, pool at zero ---

ZERO = "zero"
ZERO_MODEL_PATH = "/models/tiny"
COLD_START_S = 600
OPERATOR = "app.kubernetes.io/instance=mainsail,app.kubernetes.io/name=mainsail"
KINDS = (
    "servingpools,rayclusters,statefulsets,deployments,services,secrets,configmaps,networkpolicies"
)


def _zero_document(claim: str) -> dict[str, Any]:
    """tiny.yaml's model, read from a PersistentVolumeClaim (`subPath` inside it), one pool
    that sits at zero until a request comes (autoscaler 0..1), no cache pool."""
    return {
        "apiVersion": "mainsail.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": ZERO},
        "spec": {
            "model": {
                "name": "tiny-llama", "path": ZERO_MODEL_PATH,
                "volume": {"claimName": claim, "subPath": "tiny-llama"},
            },
            "engine": yaml.safe_load(EXAMPLE.read_text())["spec"]["engine"],
            "pools": {
                "unified": {
                    "replicas": 0,
                    "resources": {"cpu": "250m", "memory": "3Gi"},
                    "autoscaling": {
                        "enabled": True, "minReplicas": 0, "maxReplicas": 1,
                        "targetQueueDepth": 1, "scaleDownDelaySeconds": 3600,
                    },
                },
                "cache": {"enabled": False},
            },
            "router": {"replicas": 1, "coldStartTimeoutSeconds": COLD_START_S},
        },
    }  # fmt: skip


def _model_on_a_claim(node: Node, ns: str, host_dir: Path) -> str:
    """The tiny checkpoint (what `generate: llama` makes) written on the host, offered as a
    static hostPath PersistentVolume bound to a claim in `ns`; returns the claim's name."""
    subprocess.run(
        [str(Path(sys.executable).parent / "mainsail"), "model", "init", "--arch", "llama",
         "--seed", "0", "--size", "tiny", "--out", str(host_dir / "tiny-llama")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    for path in [host_dir, *host_dir.rglob("*")]:  # the pods run as uid 65532
        path.chmod(0o755 if path.is_dir() else 0o644)
    claim, volume = "models", f"models-{ns}"
    objects = [
        {
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                "storageClassName": "", "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"namespace": ns, "name": claim},
                "hostPath": {"path": str(host_dir), "type": "Directory"},
            },
        },
        {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": ns},
            "spec": {
                "accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": volume,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    ]  # fmt: skip
    node.kubectl("apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                      "items": objects}))  # fmt: skip
    node.wait_for(
        lambda: node.kubectl(
            "get", "pvc", claim, "-n", ns, "-o", "jsonpath={.status.phase}"
        ).stdout == "Bound",
        timeout=120, what="the model claim bound",
    )  # fmt: skip
    return claim


def _children_uids(node: Node, ns: str) -> dict[str, str]:
    """kind/name -> uid of every object the operator made for ZERO, each checked to have the
    deployment as its one owner and controller."""
    md = json.loads(node.kubectl("get", "modeldeployment", ZERO, "-n", ns, "-o", "json").stdout)
    listed = node.kubectl("get", KINDS, "-n", ns, "-l", f"mainsail.dev/deployment={ZERO}",
                          "-o", "json").stdout  # fmt: skip
    out = {}
    for item in json.loads(listed)["items"]:
        refs = item["metadata"].get("ownerReferences", [])
        if not any(o["kind"] == "ModelDeployment" for o in refs):
            continue  # not the operator's (e.g. KubeRay's head Service)
        owners = [(o["kind"], o["uid"], o.get("controller")) for o in refs]
        assert owners == [("ModelDeployment", md["metadata"]["uid"], True)], item["metadata"]
        out[f"{item['kind']}/{item['metadata']['name']}"] = item["metadata"]["uid"]
    return out


def _expected_children(ns: str, claim: str) -> set[str]:
    from mainsail.operator.desired import desired_children
    from mainsail.operator.naming import Owner
    from mainsail.operator.settings import OperatorSettings
    from mainsail.spec.deployment import load_model_deployment

    md = load_model_deployment(_zero_document(claim))
    children = desired_children(Owner(ZERO, ns, "uid"), md.spec, OperatorSettings())
    return {f"{c['kind']}/{c['metadata']['name']}" for c in children}


def _pods(node: Node, ns: str, selector: str) -> list[str]:
    items = json.loads(node.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json").stdout)
    return [
        p["metadata"]["name"] for p in items["items"] if not p["metadata"].get("deletionTimestamp")
    ]


def _complete(base_url: str, api_key: str, timeout: float) -> str:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
    reply = client.completions.create(
        model="tiny-llama", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    return reply.choices[0].text


def _operator_rules(node: Node, release_ns: str) -> tuple[str, list[dict[str, Any]]]:
    """(name, rules) of the chart's ClusterRole for the release in `release_ns`."""
    listed = node.kubectl("get", "clusterroles", "-l", OPERATOR, "-o", "json").stdout
    (role,) = [
        r for r in json.loads(listed)["items"] if r["metadata"]["name"].startswith(release_ns)
    ]
    return role["metadata"]["name"], role["rules"]


def _set_rules(node: Node, role: str, rules: list[dict[str, Any]], ns: str, can: bool) -> None:
    """Replace the ClusterRole's rules; return once the API server's authorizer says its
    subject can (or cannot) patch Deployments in `ns`."""
    patch = [{"op": "replace", "path": "/rules", "value": rules}]
    node.kubectl("patch", "clusterrole", role, "--type=json", "-p", json.dumps(patch))
    binding = json.loads(node.kubectl("get", "clusterrolebinding", role, "-o", "json").stdout)
    (subject,) = binding["subjects"]
    who = f"system:serviceaccount:{subject['namespace']}:{subject['name']}"
    answer = "yes" if can else "no"
    node.wait_for(
        lambda: node.kubectl(
            "auth", "can-i", "patch", "deployments.apps", "-n", ns, "--as", who, check=False
        ).stdout.strip() == answer,
        timeout=60, what=f"`can-i patch deployments` = {answer} for the operator",
    )  # fmt: skip


def _ready_condition(node: Node, ns: str) -> dict[str, Any]:
    md = json.loads(node.kubectl("get", "modeldeployment", ZERO, "-n", ns, "-o", "json").stdout)
    conditions = (md.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_restarted_operator_converges_and_a_request_wakes_a_pool_at_zero(
    reference: tuple[str, str, int], deployed: tuple[Node, str], tmp_path: Path
) -> None:
    """A second ModelDeployment, its model on a PersistentVolumeClaim, applied while the
    chart's ClusterRole has no writes of Deployments: the operator's pass deterministically
    stops half-way, at the router Deployment (late in the apply order): the children before it
    exist, status (`Ready` False, `ApplyFailed`) and a Warning event name the refused child.
    Then the operator's pod is force-deleted (mid-reconcile: the job is half done) and the
    ClusterRole restored; the replacement finishes the job with exactly the children the spec
    asks for (no second copy of anything, the ones made before the kill untouched, each
    controlled by the deployment) and the deployment turns Ready with its pool at zero.
    Then one request: the router holds it, the autoscaler reads it as demand and scales the
    pool 0 -> 1, the new worker loads the checkpoint from the claim, and the held request gets
    exactly `mainsail up`'s tokens. (The tiny deployment goes first: the two-core node has no
    CPU for a second router beside it.)"""
    node, tiny_ns = deployed
    # The two-core node has no CPU left for a second router beside `tiny` (the last test of
    # this module): tiny goes, the chart's operator stays.
    delete_deployment(node, tiny_ns, "tiny")  # and its terminating pods gone (their CPU)
    ns = f"zero-{os.getpid()}"
    node.create_namespace(ns)
    host_dir = Path(tempfile.mkdtemp(prefix="mainsail-model-"))
    role, rules = _operator_rules(node, tiny_ns)
    try:
        claim = _model_on_a_claim(node, ns, host_dir)
        (old_operator,) = _pods(node, tiny_ns, OPERATOR)
        _set_rules(node, role, without_deployment_writes(rules), ns, can=False)
        node.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(_zero_document(claim)))
        refused = f"Deployment/{ZERO}-router"
        node.wait_for(lambda: _ready_condition(node, ns).get("reason") == "ApplyFailed",
                      timeout=120, what="Ready False, ApplyFailed")  # fmt: skip
        ready = _ready_condition(node, ns)
        assert ready["status"] == "False" and refused in ready["message"], ready
        assert any(e["reason"] == "ApplyFailed" and e["type"] == "Warning"
                   and refused in e["message"] for e in events(node, ns, ZERO))  # fmt: skip
        made = _children_uids(node, ns)
        expected = _expected_children(ns, claim)
        assert set(made) == expected - {refused}, sorted(set(made) ^ expected)
        node.kubectl("delete", "pod", "-n", tiny_ns, old_operator, "--grace-period=0", "--force")
        _set_rules(node, role, rules, ns, can=True)  # after the kill: the old one never sees it
        print(f"operator killed with {len(made)} of {len(expected)} children made")
        node.wait_for(
            lambda: bool(set(_pods(node, tiny_ns, OPERATOR)) - {old_operator}),
            timeout=120, what="a new operator pod",
        )  # fmt: skip
        node.kubectl(
            "wait", "-n", ns, "--for=condition=Ready", f"modeldeployment/{ZERO}",
            f"--timeout={int(READY_TIMEOUT_S)}s", timeout=READY_TIMEOUT_S + 30,
        )  # fmt: skip
        children = _children_uids(node, ns)
        assert set(children) == expected
        assert {k: children[k] for k in made} == made  # untouched, the Secret's token too
        assert len(_pods(node, ns, "app.kubernetes.io/component=router")) == 1
        assert len(_pods(node, ns, "ray.io/node-type=head")) == 1
        assert _pods(node, ns, "app.kubernetes.io/component=worker") == []
        time.sleep(10)  # a few passes of the new operator: the very same objects stay
        assert _children_uids(node, ns) == children
        print(f"the new operator converged: {len(children)} children, none made twice")

        key = client_key(credentials(node, ns, ZERO))
        base = f"http://{node.service_ip(ns, f'{ZERO}-router')}:8000/v1"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(node.in_netns, _complete, base, key, COLD_START_S,
                               timeout=COLD_START_S + 60)  # fmt: skip

            def scaled_up() -> bool:
                replicas = node.kubectl(
                    "get", "servingpool", f"{ZERO}-unified", "-n", ns,
                    "-o", "jsonpath={.spec.replicas}",
                ).stdout  # fmt: skip
                return replicas == "1"

            node.wait_for(scaled_up, timeout=120, what="the autoscaler waking the pool")
            assert not held.done(), "answered before any worker existed"
            assert held.result(timeout=COLD_START_S + 60) == reference[0]
        assert node.in_netns(_ask, base, key, timeout=300) == reference
        assert any(e["reason"] == "ScaledUp" for e in events(node, ns, ZERO))
    except (subprocess.CalledProcessError, NodeError):
        print(diagnostics(node, ns, ZERO))
        raise
    finally:
        with contextlib.suppress(NodeError, subprocess.CalledProcessError):  # keep the cause
            _set_rules(node, role, rules, ns, can=True)
        node.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        node.kubectl("delete", "pv", f"models-{ns}", "--wait=false", check=False)
        shutil.rmtree(host_dir, ignore_errors=True)
