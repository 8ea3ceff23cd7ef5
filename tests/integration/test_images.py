"""Each built image runs its entry point with only the packages its Dockerfile installs.

The images are the tars `deploy/images/build.py` writes (scripts/test.sh builds them before
pytest, so the build's time is visible there and no test timeout covers it). Each test unpacks
the tar itself, the artifact the node imports, and runs commands chrooted as the image's user
with its environment, in fresh mount, PID and network namespaces (no route anywhere; Ray gets
a loopback device and nothing else). Needs root; without a cached image the test skips, unless
`MAINSAIL_IMAGES_REQUIRED=1` (set by scripts/test.sh) makes a missing image a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support.reference import greedy_tokens

from mainsail.operator.desired_cache import cache_statefulset
from mainsail.operator.naming import Owner
from mainsail.router.settings import RouterConfig
from mainsail.spec.pools import CachePool
from mainsail.spec.worker_auth import REDIS_PASSWORD_ENV

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking and chrooting images needs root"),
]
IMAGES = Path(__file__).resolve().parents[2] / "deploy" / "images"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, IMAGES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build = _load("build")
image_run = _load("image_run")


@dataclass
class Unpacked:
    name: str
    rootfs: Path
    config: dict[str, Any]

    def run(
        self, *argv: str, timeout: float = 120.0, loopback: bool = False
    ) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = image_run.run_in_image(
            self.rootfs, self.config, list(argv), timeout=timeout, loopback=loopback
        )
        return done

    def ok(self, *argv: str, timeout: float = 120.0, loopback: bool = False) -> str:
        done = self.run(*argv, timeout=timeout, loopback=loopback)
        assert done.returncode == 0, (
            f"{self.name}: {' '.join(argv)} exited {done.returncode}\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )
        return done.stdout

    def entrypoint(self) -> list[str]:
        return list(self.config.get("Entrypoint") or [])


def _unpacked(name: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unpacked]:
    image = build.cached_image(name)
    if image is None:
        message = (
            f"no cached {name} image for these sources; build it with "
            f"`python deploy/images/build.py {name}` (as root)"
        )
        if os.environ.get("MAINSAIL_IMAGES_REQUIRED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    rootfs = tmp_path_factory.mktemp(f"image-{name}") / "rootfs"
    try:
        config = image_run.unpack_image(Path(image.tar), rootfs)
        yield Unpacked(name, rootfs, config)
    finally:  # rm is several times faster than shutil.rmtree on a 6 GB tree
        subprocess.run(["rm", "-rf", "--one-file-system", str(rootfs)], check=False, timeout=600)


@pytest.fixture(scope="module")
def router_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unpacked]:
    yield from _unpacked("router", tmp_path_factory)


@pytest.fixture(scope="module")
def operator_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unpacked]:
    yield from _unpacked("operator", tmp_path_factory)


@pytest.fixture(scope="module")
def worker_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unpacked]:
    yield from _unpacked("worker", tmp_path_factory)


@pytest.fixture(scope="module")
def redis_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unpacked]:
    yield from _unpacked("redis", tmp_path_factory)


ABSENT = (
    "import importlib.util as u, sys; found = [m for m in sys.argv[1:] if u.find_spec(m)]; "
    "sys.exit(f'present: {found}' if found else 0)"
)


def test_router_image_runs_the_router_and_carries_no_engine(
    router_image: Unpacked, tiny_model_dir: Path
) -> None:
    entry = router_image.entrypoint()
    assert entry == ["mainsail"]
    assert "--config" in router_image.config["Cmd"]
    assert "usage" in router_image.ok(*entry, "router", "--help").lower()
    router_image.ok(
        "python3", "-c", "import mainsail.router.server, mainsail.cli.router_cmd, "
        "mainsail.spec.tokenizer, mainsail.router.front.grpc_api, mainsail.router.tracing_live, "
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
    )  # fmt: skip
    router_image.ok("python3", "-c", ABSENT, "torch", "ray", "kopf", "safetensors")
    # The entry point as the operator's Deployment runs it, on a generated checkpoint (what the
    # model init container writes): it loads the tokenizer and chat template and serves HTTP.
    shutil.copytree(tiny_model_dir, router_image.rootfs / "tmp" / "model")
    config = RouterConfig(model_name="tiny", model_dir=Path("/tmp/model"), http_port=0, grpc_port=0)
    (router_image.rootfs / "tmp" / "router.json").write_text(config.model_dump_json())
    (router_image.rootfs / "tmp" / "probe.py").write_text(ROUTER_PROBE)
    script = (
        f"{' '.join(entry)} router --config /tmp/router.json --ready-file /tmp/ready.json "
        ">/tmp/router.log 2>&1 & python3 /tmp/probe.py || { cat /tmp/router.log; exit 1; }"
    )
    out = router_image.ok("sh", "-c", script, timeout=120, loopback=True)
    assert '"id": "tiny"' in out.replace('"id":"tiny"', '"id": "tiny"'), out


ROUTER_PROBE = """
import json, os, time, urllib.request
deadline = time.monotonic() + 60
while not os.path.exists("/tmp/ready.json"):
    assert time.monotonic() < deadline, "router never wrote its ready file"
    time.sleep(0.2)
time.sleep(0.2)
port = json.load(open("/tmp/ready.json"))["http_port"]
with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as r:
    print(r.read().decode())
"""


def test_operator_image_runs_the_operator_and_carries_no_engine(operator_image: Unpacked) -> None:
    entry = operator_image.entrypoint()
    assert entry == ["python3", "-m", "mainsail.operator"]
    assert "--liveness" in operator_image.ok(*entry, "--help")
    operator_image.ok(
        "python3", "-c", "import mainsail.operator.handlers, mainsail.operator.reconciler, kopf",
    )  # fmt: skip
    operator_image.ok("python3", "-c", ABSENT, "torch", "ray", "tokenizers", "httptools")


RAY_CHECK = """
import ray
ray.init(address="auto")

@ray.remote
def engine_step():
    import torch
    from mainsail.workers.engine import model_runner  # noqa: F401
    return int(torch.arange(5).sum())

print("ray", ray.get(engine_step.remote()))
"""


ENGINE_CHECK = """
import json, sys
from pathlib import Path
from mainsail.workers.engine import Engine, EngineConfig, EngineRequest, SamplingParams

engine = Engine(Path(sys.argv[1]), EngineConfig(max_model_len=1024))
params = SamplingParams(temperature=0.0, max_tokens=int(sys.argv[3]), ignore_eos=True)
engine.add_request(EngineRequest("image", json.loads(sys.argv[2]), params))
out = []
for _ in range(1000):
    if not engine.has_unfinished():
        break
    for o in engine.step():
        out += o.new_token_ids
print(json.dumps(out))
"""
PROMPT = [1, 5, 9, 13, 17, 21]


def test_worker_image_runs_torch_ray_and_the_engine(
    worker_image: Unpacked, tiny_model_dir: Path
) -> None:
    # What KubeRay runs (through `bash -lc`, whose /etc/profile resets PATH).
    worker_image.ok("bash", "-lc", "command -v ray && command -v mainsail && command -v wget")
    worker_image.ok(
        "python3", "-c", "import torch, ray, mainsail.workers.ray_actor, mainsail.workers.host, "
        "mainsail.spec.tokenizer, mainsail.workers.tracing, "
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter; "
        "assert float(torch.ones(3).sum()) == 3.0",
    )  # fmt: skip
    # torch.compile's triton is left out (worker-overrides.txt); the engine does not need it.
    worker_image.ok("python3", "-c", ABSENT, "triton")
    # The router's model init container: generate the checkpoint on the CPU. It is the very
    # checkpoint this machine generates (the marker holds every file's SHA-256)...
    out = worker_image.ok("mainsail", "model", "init", "--out", "/tmp/model", timeout=180)
    assert "wrote a tiny llama checkpoint" in out
    marker = ".mainsail-checkpoint.json"
    made = json.loads((worker_image.rootfs / "tmp" / "model" / marker).read_text())
    assert made == json.loads((tiny_model_dir / marker).read_text())
    # ...and the image's engine generates exactly what the reference engine does here.
    (worker_image.rootfs / "tmp" / "engine_check.py").write_text(ENGINE_CHECK)
    tokens = worker_image.ok(
        "python3", "/tmp/engine_check.py", "/tmp/model", json.dumps(PROMPT), "8", timeout=180
    )
    assert json.loads(tokens) == greedy_tokens(tiny_model_dir, PROMPT, 8)
    # A Ray head as `ray start` makes it, and a task importing torch and the engine on it.
    (worker_image.rootfs / "tmp" / "ray_check.py").write_text(RAY_CHECK)
    script = (
        "ray start --head --num-cpus=1 --disable-usage-stats --include-dashboard=false "
        ">/tmp/ray-start.log 2>&1 || { cat /tmp/ray-start.log; exit 1; }; "
        "python3 /tmp/ray_check.py"
    )
    assert "ray 10" in worker_image.ok("bash", "-c", script, timeout=240, loopback=True)


def test_redis_image_serves_with_the_operators_arguments(redis_image: Unpacked) -> None:
    entry = redis_image.entrypoint()
    assert entry[0] == "redis-server"
    # The cache StatefulSet's own arguments (the password expanded as Kubernetes expands
    # `$(VAR)`), on a Unix socket instead of the port.
    owner = Owner(name="img", namespace="ns", uid="uid", generation=1)
    pod = cache_statefulset(owner, CachePool(), "unused")["spec"]["template"]["spec"]
    password = secrets.token_hex(8)
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: {REDIS_PASSWORD_ENV: password}[m.group(1)], arg)
        for arg in pod["containers"][0]["args"]
    ]
    assert password in args, "the operator starts the cache with a password"
    server = [*entry, *args, "--port", "0", "--unixsocket", "/tmp/redis.sock", "--daemonize", "yes"]
    cli = f"redis-cli -s /tmp/redis.sock --no-auth-warning -a {password}"
    script = (
        f"{shlex.join(server)} && for i in $(seq 50); do "
        f"{cli} ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done; "
        f"{cli} set k v >/dev/null && {cli} get k && "
        "redis-cli -s /tmp/redis.sock --no-auth-warning -a wrong get k"
    )
    out = redis_image.ok("sh", "-c", script)
    assert out.split()[0] == "v", out
    assert "NOAUTH" in out or "WRONGPASS" in out, out  # a wrong password reads nothing
