"""Unpack an OCI image-layout tar into a directory and run a command in it, without an engine.

Why: a test must fail when an image's package set cannot run its entry point, and must check
the built artifact itself (the tar the node imports), not the tree it was built from. Layers
are applied in order with OCI whiteouts honoured; commands run chrooted as the image's user,
with its environment and working directory, in new mount, PID and network namespaces: the
network namespace has only a loopback device that is down, so nothing in the image can reach
anything, and every process it starts dies with it.

    python deploy/images/image_run.py IMAGE.tar DIR -- CMD...   (DIR is reused if unpacked)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class ImageLayoutError(ValueError):
    """The tar is not the OCI image layout this expects; the message says what is missing."""


def _json_member(outer: tarfile.TarFile, name: str) -> Any:
    try:
        member = outer.extractfile(name)
    except KeyError:
        member = None
    if member is None:
        raise ImageLayoutError(f"{name} missing from the image tar")
    return json.load(member)


def read_manifest(outer: tarfile.TarFile) -> tuple[dict[str, Any], list[str]]:
    """(runtime config, layer blob names bottom first) of the image's one manifest."""
    index = _json_member(outer, "index.json")
    manifests = index.get("manifests") or []
    if len(manifests) != 1:
        raise ImageLayoutError(f"index.json: expected one manifest, found {len(manifests)}")
    manifest = _json_member(outer, _blob(manifests[0]["digest"]))
    config = _json_member(outer, _blob(manifest["config"]["digest"]))
    return config.get("config", {}), [_blob(layer["digest"]) for layer in manifest["layers"]]


def _blob(digest: str) -> str:
    algorithm, _, hex_digest = digest.partition(":")
    return f"blobs/{algorithm}/{hex_digest}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _apply_layer(layer: tarfile.TarFile, dest: Path) -> None:
    seen: set[str] = set()
    opaque: list[str] = []
    for member in layer:
        name = str(PurePosixPath(member.name.lstrip("/")))
        if name in ("", ".") or ".." in PurePosixPath(name).parts:
            continue
        parent, base = os.path.split(name)
        if base == OPAQUE:
            opaque.append(parent)
            continue
        if base.startswith(WHITEOUT):
            _remove(dest / parent / base[len(WHITEOUT) :])
            continue
        seen.add(name)
        target = dest / name
        if target.is_symlink() or (target.exists() and not (member.isdir() and target.is_dir())):
            _remove(target)
        layer.extract(member, dest, numeric_owner=True, filter="fully_trusted")
    for parent in opaque:  # drop what lower layers had in an opaque directory
        directory = dest / parent
        for child in list(directory.iterdir()) if directory.is_dir() else []:
            rel = str(PurePosixPath(parent, child.name)) if parent else child.name
            if rel not in seen:
                _remove(child)


def unpack_image(image_tar: Path, dest: Path) -> dict[str, Any]:
    """Apply every layer of `image_tar` to `dest` (created); returns the runtime config."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(image_tar, "r:") as outer:
        config, blobs = read_manifest(outer)
        for blob in blobs:
            stream = outer.extractfile(blob)
            if stream is None:
                raise ImageLayoutError(f"{blob} missing from the image tar")
            with tarfile.open(fileobj=stream, mode="r|") as layer:
                _apply_layer(layer, dest)
    (dest / ".image-config.json").write_text(json.dumps(config))
    return config


def image_env(config: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def run_in_image(
    rootfs: Path,
    config: dict[str, Any],
    argv: Sequence[str],
    timeout: float = 120.0,
    extra_env: dict[str, str] | None = None,
    loopback: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the unpacked image as its user, env and working directory (needs root).

    `argv` replaces the image's command; prefix it with the config's Entrypoint yourself to
    run the entry point. `loopback` brings the namespace's `lo` up (servers that talk to
    themselves, such as Ray); nothing else is ever reachable. Output is captured as text.
    """
    env = {**image_env(config), **(extra_env or {})}
    user, _, group = (config.get("User") or "0").partition(":")
    workdir = config.get("WorkingDir") or "/"
    for name in ("proc", "dev", "tmp"):
        (rootfs / name).mkdir(exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    inner = [
        "unshare",
        f"--root={rootfs}",
        f"--wd={workdir}",
        f"--setuid={user}",
        f"--setgid={group or user}",
        "/usr/bin/env",
        "-i",
        *(f"{k}={v}" for k, v in env.items()),
        *argv,
    ]
    script = 'mount -t proc proc "$1/proc" && mount --rbind /dev "$1/dev" && shift && exec "$@"'
    if loopback:
        script = f"ip link set lo up && {script}"
    cmd = ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--propagation"]
    cmd += ["private", "--", "sh", "-c", script, "sh", str(rootfs), *inner]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[2] != "--":
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    image, rootfs, command = Path(args[0]), Path(args[1]), args[3:]
    saved = rootfs / ".image-config.json"
    config = json.loads(saved.read_text()) if saved.is_file() else unpack_image(image, rootfs)
    done = run_in_image(rootfs, config, command)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
