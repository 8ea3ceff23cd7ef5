"""The Dockerfile subset the engine-less image builder reads, and what keys its cache.

The builder (`deploy/images/build.py`) executes the same `deploy/images/Dockerfile.*` that
Docker users build, so its parser must read every line of them exactly, and refuse whatever it
would otherwise mis-build. Fast: no build, no root.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "deploy" / "images"


def _load(name: str) -> ModuleType:
    return _load_path(name, IMAGES / f"{name}.py")


def _load_path(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


dockerfile = _load("dockerfile")
image_cache = _load("image_cache")
image_steps = _load("image_steps")


def test_continuations_env_expansion_workdir_and_copy_destinations() -> None:
    text = """# syntax=docker/dockerfile:1
# a comment
FROM debian:bookworm-slim AS base
ENV APP=/opt/app GREETING="hello world"
WORKDIR $APP
RUN --mount=type=cache,id=uv,target=/root/.cache/uv \\
    --mount=type=cache,target=/var/cache/x \\
    echo one \\
 && echo two
COPY a.txt b.txt ./
COPY src lib
COPY --chown=65532:65532 one.txt /etc/one.conf
WORKDIR sub
USER 65532:65532
ENTRYPOINT ["mainsail"]
CMD ["router", "--config", "/etc/x.json"]
LABEL org.example=1
"""
    spec = dockerfile.parse(text)
    assert spec.base == "debian:bookworm-slim"
    assert spec.env == {"APP": "/opt/app", "GREETING": "hello world"}
    assert spec.workdir == "/opt/app/sub" and spec.user == "65532:65532"
    assert spec.entrypoint == ["mainsail"] and spec.cmd == ["router", "--config", "/etc/x.json"]
    assert spec.labels == {"org.example": "1"}
    run = spec.steps[1]
    assert isinstance(run, dockerfile.Run)
    assert run.command == "echo one && echo two" and run.workdir == "/opt/app"
    assert run.mounts == (
        dockerfile.CacheMount(target="/root/.cache/uv", id="uv"),
        dockerfile.CacheMount(target="/var/cache/x", id="/var/cache/x"),
    )
    assert dict(run.env)["GREETING"] == "hello world"
    copies = [s for s in spec.steps if isinstance(s, dockerfile.Copy)]
    assert [(c.sources, c.dest, c.chown) for c in copies] == [
        (("a.txt", "b.txt"), "/opt/app/", None),
        (("src",), "/opt/app/lib", None),
        (("one.txt",), "/etc/one.conf", (65532, 65532)),
    ]


def test_shell_form_entrypoint_runs_through_sh() -> None:
    spec = dockerfile.parse("FROM debian:bookworm-slim\nCMD redis-server --port 1\n")
    assert spec.cmd == ["/bin/sh", "-c", "redis-server --port 1"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("RUN true\n", "must start with FROM"),
        ("FROM a\nFROM b\n", "only one FROM"),
        ("FROM a\nADD x /x\n", "ADD: not supported"),
        ("FROM a\nRUN --network=none true\n", "unsupported option"),
        ("FROM a\nRUN --mount=type=bind,target=/x true\n", "only type=cache"),
        ("FROM a\nRUN --mount=type=cache,target=rel true\n", "absolute target"),
        ('FROM a\nRUN ["true"]\n', "shell form only"),
        ("FROM a\nCOPY ../secret /x\n", "inside the context"),
        ("FROM a\nCOPY *.py /x/\n", "plain path"),
        ("FROM a\nCOPY --chown=app x /x\n", "numeric UID"),
        ("FROM a\nCOPY --from=b x /x\n", "unsupported option"),
        ('FROM a\nCMD ["a", 1]\n', "list of strings"),
        ("FROM a\nRUN echo \\\n", "continuation at end of file"),
    ],
)
def test_anything_outside_the_subset_is_refused_with_its_line(text: str, says: str) -> None:
    with pytest.raises(dockerfile.DockerfileError, match=says):
        dockerfile.parse(text)


@pytest.mark.parametrize("name", image_cache.NAMES)
def test_every_image_file_parses_and_copies_existing_context_paths(name: str) -> None:
    spec = dockerfile.parse(image_cache.dockerfile_path(name).read_text())
    assert spec.base in image_cache.BASES
    assert spec.user and spec.user.split(":")[0] != "0", "images run as a non-root user"
    patterns = image_cache.ignore_patterns(ROOT)
    for step in spec.steps:
        if isinstance(step, dockerfile.Copy):
            for source in step.sources:
                assert list(image_cache.context_files(ROOT, source, patterns)), source
    assert image_cache.image_config(spec)["Env"][0].startswith("PATH=")


def _installed_extra(name: str) -> str:
    text = image_cache.dockerfile_path(name).read_text()
    runs = [s for s in dockerfile.parse(text).steps if isinstance(s, dockerfile.Run)]
    extras: list[str] = [w for s in runs for w in s.command.split() if w.startswith("'.[")]
    assert len(extras) == 1, f"Dockerfile.{name} should install exactly one '.[extra]'"
    return extras[0].strip("'.[]")


@pytest.mark.parametrize(
    ("name", "needs", "never"),
    [
        ("router", {"tokenizers", "jinja2", "httptools"}, {"torch", "ray"}),
        ("operator", {"kopf", "kubernetes"}, {"torch", "ray", "tokenizers"}),
        ("worker", {"torch", "ray", "tokenizers", "jinja2", "safetensors"}, set()),
    ],
)
def test_each_python_image_installs_its_component_extra(
    name: str, needs: set[str], never: set[str]
) -> None:
    extra = _installed_extra(name)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = [r for part in extra.split(",") for r in extras[part]]  # e.g. router,tracing
    names = {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0] for r in requirements}
    assert needs <= names, f"{extra} lacks {needs - names}"
    assert not (never & names), f"{extra} must not pull {never & names}"


def test_dockerignore_matching() -> None:
    patterns = [".venv", "**/__pycache__", "**/*.pyc", "build"]
    assert image_cache.ignored(".venv", patterns)
    assert image_cache.ignored(".venv/bin/python", patterns)
    assert image_cache.ignored("router/mainsail/__pycache__/x.cpython-311.pyc", patterns)
    assert image_cache.ignored("a/b/c.pyc", patterns)
    assert image_cache.ignored("build/x", patterns)
    assert not image_cache.ignored("router/mainsail/build.py", patterns)
    assert not image_cache.ignored("router/mainsail/router/server.py", patterns)


def test_image_key_follows_copied_content_not_ignored_files(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("**/__pycache__\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("A = 1\n")
    (tmp_path / "other.txt").write_text("not copied\n")
    text = "FROM debian:bookworm-slim\nCOPY pkg /src/pkg\n"
    spec = dockerfile.parse(text)
    key = image_cache.image_key(text, spec, tmp_path)
    (tmp_path / "pkg" / "__pycache__").mkdir()
    (tmp_path / "pkg" / "__pycache__" / "a.pyc").write_bytes(b"\0")
    (tmp_path / "other.txt").write_text("changed\n")
    assert image_cache.image_key(text, spec, tmp_path) == key
    (tmp_path / "pkg" / "a.py").write_text("A = 2\n")
    changed = image_cache.image_key(text, spec, tmp_path)
    assert changed != key
    (tmp_path / "pkg" / "a.py").chmod(0o755)
    assert image_cache.image_key(text, spec, tmp_path) != changed
    other = text + "ENV X=1\n"
    assert image_cache.image_key(other, dockerfile.parse(other), tmp_path) != (
        image_cache.image_key(text, spec, tmp_path)
    )


def test_runtime_config_is_what_the_oci_writer_takes() -> None:
    spec = dockerfile.parse(image_cache.dockerfile_path("router").read_text())
    config = image_cache.image_config(spec)
    assert set(config) <= {"Env", "Entrypoint", "Cmd", "WorkingDir", "User", "Labels"}
    assert config["Entrypoint"] == ["mainsail"]
    assert config["Cmd"] == ["router", "--config", "/etc/mainsail/config.json"]
    assert "HOME=/home/mainsail" in config["Env"]


@pytest.mark.skipif(os.geteuid() != 0, reason="overlay whiteouts are 0/0 character devices")
def test_overlay_whiteouts_survive_the_layer_tar_and_unpacking(tmp_path: Path) -> None:
    """A file deleted and a directory replaced during a build stay deleted in the image."""
    oci = _load_path("oci_image", ROOT / "deploy" / "testbed" / "oci_image.py")
    image_run = _load("image_run")
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "gone").write_text("deleted by a RUN")
    (lower / "etc" / "kept").write_text("k")
    (lower / "opq").mkdir()
    (lower / "opq" / "old").write_text("hidden by the opaque directory")
    upper = tmp_path / "upper"  # what overlayfs leaves in its upper directory
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (upper / "opq").mkdir()
    os.setxattr(upper / "opq", "trusted.overlay.opaque", b"y")
    (upper / "opq" / "new").write_text("n")
    (upper / "added").write_text("a")
    image_steps.convert_whiteouts(upper)
    assert (upper / "etc" / ".wh.gone").is_file() and (upper / "opq" / ".wh..wh..opq").is_file()
    image_steps.layer_tar(lower, tmp_path / "lower.tar")
    image_steps.layer_tar(upper, tmp_path / "upper.tar")
    layers = [tmp_path / "lower.tar", tmp_path / "upper.tar"]
    oci.write_image("mainsail/t:1", layers, {"User": "65532:65532"}, tmp_path / "image.tar")
    rootfs = tmp_path / "rootfs"
    config = image_run.unpack_image(tmp_path / "image.tar", rootfs)
    assert config["User"] == "65532:65532"
    files = {str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if not p.is_dir()}
    assert files == {"etc/kept", "opq/new", "added", ".image-config.json"}
