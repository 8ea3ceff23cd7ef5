"""Executing a Dockerfile's steps on an overlay of the base, inside a private mount namespace.

Why apart from the builder (`build.py`): this is the part that runs as root with mounts
(`unshare --mount`, `build.py --execute PLAN`): RUN in a chroot with the host's caches bound at
its `--mount=type=cache` targets (and the machine's trust store and proxy settings for that
step only), COPY from the build context, WORKDIR; then the overlay's upper directory becomes
an OCI layer (whiteouts converted, `layer_tar`). Every mount it makes disappears with the
namespace, even if the process is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dockerfile import CacheMount, Copy, Run, Workdir, parse
from image_cache import (
    DEFAULT_PATH,
    BuildError,
    cache_root,
    context_files,
    ignore_patterns,
    log,
)


def layer_tar(directory: Path, out: Path, exclude: Sequence[str] = ()) -> None:
    """An uncompressed layer tar of `directory`'s contents (names without a leading `./`)."""
    names = sorted(os.listdir(directory))
    if not names:
        with tarfile.open(out, "w"):
            pass
        return
    cmd = [
        "tar",
        "--create",
        f"--file={out}",
        f"--directory={directory}",
        "--numeric-owner",
        "--sort=name",
        "--format=posix",
        "--pax-option=delete=atime,delete=ctime",
        *(f"--exclude={pattern}" for pattern in exclude),
        "--",
        *names,
    ]
    subprocess.run(cmd, check=True)


# --- executing the steps (inside a private mount namespace) --------------------------------


def host_cache_dir(mount: CacheMount) -> Path:
    """The host directory behind a cache mount: the machine's own caches where they exist."""
    if mount.id == "uv":
        return Path(os.environ.get("UV_CACHE_DIR") or Path.home() / ".cache" / "uv")
    if mount.id == "pip":
        return Path(os.environ.get("PIP_CACHE_DIR") or Path.home() / ".cache" / "pip")
    if mount.id == "wheels":
        links = os.environ.get("PIP_FIND_LINKS", "")
        if links and Path(links).is_dir():
            return Path(links)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in mount.id).strip("_.")
    return cache_root() / "mounts" / (safe or "cache")


TRUST_DIR = "/run/mainsail-build"
TRUST_ENV = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
PROXY_ENV = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


def build_trust() -> Path | None:
    """The CA bundle this machine's own tools are told to use, if any (`SSL_CERT_FILE`...)."""
    for name in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    return None


def _inside(merged: Path, path: str) -> Path:
    """`path` of the image, on the host (no `..` escapes: the parser refuses them)."""
    return merged / path.lstrip("/")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _makedirs(merged: Path, path: str, created: list[Path]) -> Path:
    """mkdir -p inside the image, remembering what was created (to remove mount points)."""
    target = _inside(merged, path)
    missing = []
    probe = target
    while not probe.exists() and probe != merged:
        missing.append(probe)
        probe = probe.parent
    target.mkdir(parents=True, exist_ok=True)
    created.extend(reversed(missing))
    return target


def _user_ids(user: str) -> tuple[int, int] | None:
    if not user or user in ("0", "root", "0:0"):
        return None
    name, _, group = user.partition(":")
    try:
        return int(name), int(group or name)
    except ValueError:
        raise BuildError(f"USER {user}: RUN after a non-numeric USER is not supported") from None


def _run_step(merged: Path, step: Run) -> None:
    created: list[Path] = []
    mounted: list[Path] = []
    try:
        proc = _makedirs(merged, "/proc", created)
        _mount("-t", "proc", "proc", str(proc))
        mounted.append(proc)
        dev = _makedirs(merged, "/dev", created)
        _mount("--rbind", "/dev", str(dev))
        mounted.append(dev)
        resolv = _inside(merged, "/etc/resolv.conf")
        if not resolv.exists() and not resolv.is_symlink():
            resolv.touch()
            created.append(resolv)
        if not resolv.is_symlink():
            _mount("--bind", "/etc/resolv.conf", str(resolv))
            mounted.append(resolv)
        for mount in step.mounts:
            host = host_cache_dir(mount)
            host.mkdir(parents=True, exist_ok=True)
            target = _makedirs(merged, mount.target, created)
            _mount("--bind", str(host), str(target))
            mounted.append(target)
        env = {"PATH": DEFAULT_PATH, "HOME": "/root"}
        trust = build_trust()
        if trust is not None:
            # The machine's own trust store (e.g. a TLS-inspecting proxy's CA) for this step
            # only, at a path of its own: the image's /etc/ssl stays the image's.
            target = _makedirs(merged, TRUST_DIR, created) / "ca-certificates.crt"
            target.touch()
            created.append(target)
            _mount("--bind", "-o", "ro", str(trust), str(target))
            mounted.append(target)
            path = f"{TRUST_DIR}/ca-certificates.crt"
            env.update(dict.fromkeys(TRUST_ENV, path))
        env.update({k: v for k, v in os.environ.items() if k.lower() in PROXY_ENV})
        env.update(dict(step.env))
        ids = _user_ids(step.user)
        workdir = step.workdir

        def enter() -> None:
            os.chroot(merged)
            os.chdir(workdir)
            if ids is not None:
                os.setgroups([])
                os.setgid(ids[1])
                os.setuid(ids[0])

        log(f"  RUN {step.command[:100]}")
        done = subprocess.run(["/bin/sh", "-c", step.command], env=env, preexec_fn=enter)
        if done.returncode != 0:
            raise BuildError(f"RUN {step.command!r} exited with {done.returncode}")
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", "--recursive", "--lazy", str(path)], check=False)
        for path in reversed(created):
            if path.is_dir() and not path.is_symlink():
                with contextlib.suppress(OSError):
                    path.rmdir()
            elif path.is_file() and path.stat().st_size == 0:
                path.unlink()


def _copy_step(merged: Path, context: Path, step: Copy) -> None:
    patterns = ignore_patterns(context)
    into_dir = step.dest.endswith("/") or len(step.sources) > 1
    for source in step.sources:
        top = context / source
        is_dir = top.is_dir() and not top.is_symlink()
        for rel in context_files(context, source, patterns):
            if is_dir:
                inner = os.path.relpath(rel, source)
                dest = _inside(merged, step.dest) / inner
            elif into_dir or _inside(merged, step.dest).is_dir():
                dest = _inside(merged, step.dest) / Path(rel).name
            else:
                dest = _inside(merged, step.dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            src = context / rel
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            if src.is_symlink():
                os.symlink(os.readlink(src), dest)
            else:
                shutil.copy2(src, dest)
            if step.chown is not None:
                os.lchown(dest, *step.chown)
                parent = dest.parent
                while is_dir and parent != _inside(merged, step.dest).parent:
                    os.lchown(parent, *step.chown)
                    parent = parent.parent


def execute(plan_path: Path) -> None:
    """Run every step of a plan on an overlay (called inside `unshare --mount`)."""
    plan = json.loads(plan_path.read_text())
    merged = Path(plan["merged"])
    context = Path(plan["context"])
    spec = parse(Path(plan["dockerfile"]).read_text())
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    options = f"lowerdir={plan['lower']},upperdir={plan['upper']},workdir={plan['work']}"
    _mount("-t", "overlay", "overlay", "-o", options, str(merged))
    for step in spec.steps:
        if isinstance(step, Run):
            _run_step(merged, step)
        elif isinstance(step, Copy):
            log(f"  COPY {' '.join(step.sources)} {step.dest}")
            _copy_step(merged, context, step)
        elif isinstance(step, Workdir):
            _makedirs(merged, step.path, [])


def convert_whiteouts(upper: Path) -> None:
    """overlayfs whiteouts (0/0 character devices, opaque xattrs) -> OCI `.wh.` files."""
    for dirpath, dirnames, filenames in os.walk(upper):
        here = Path(dirpath)
        try:
            opaque = os.getxattr(here, "trusted.overlay.opaque") == b"y"
        except OSError:
            opaque = False
        if opaque and here != upper:
            (here / ".wh..wh..opq").touch()
        for name in [*filenames, *dirnames]:
            path = here / name
            info = path.lstat()
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                path.unlink()
                (here / f".wh.{name}").touch()
