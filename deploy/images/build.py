"""Build deploy/images/Dockerfile.<name> without a container engine, as OCI image-layout tars.

Why: the test bed's node (containerd, no registry, no Docker) needs Mainsail's images, and
users with Docker build the very same Dockerfiles (deploy/kind/up.sh). This builder reads
those files (`dockerfile.py`, a small subset) and executes them with what a Debian machine has:

- `FROM debian:bookworm-slim` is a root file system from `mmdebstrap --variant=apt bookworm`
  through the machine's configured Debian mirror, made once and cached; it is the image's
  first layer, shared by every image.
- The steps run on an overlay mount over that root file system, inside a private mount
  namespace (`unshare --mount`), so every mount disappears with the builder even if it is
  killed: `RUN` in a chroot (we are root), with `--mount=type=cache` bound to the host's
  caches (uv, pip, the prebuilt wheels of `$PIP_FIND_LINKS`) so torch is downloaded once per
  machine; `COPY` from the repository, honouring `.dockerignore`.
- The overlay's upper directory, whiteouts converted to OCI `.wh.` files, is the second layer;
  `deploy/testbed/oci_image.py` writes the image-layout tar.

The parts: `dockerfile.py` parses, `image_cache.py` computes the content key and knows the
cache (no root needed: `--print`), `image_steps.py` executes the steps in the namespace
(`--execute`), this file builds the base, runs the steps and writes the image.

Images are cached under `~/.cache/mainsail/images/` (or `$MAINSAIL_CACHE/images/`) as
`<name>-<key>.tar`, `key` a content hash of the Dockerfile, every file it copies and the base;
a present tar is not rebuilt, and older tars of the same name are removed (only the newest
previous one is kept). The image reference is `mainsail/<name>:<key>`.

Usage:
    python deploy/images/build.py [NAME...] [--json]     # default: every image
    python deploy/images/build.py --print NAME           # cached tar path, no build (exit 1)
Build times and sizes are logged on stderr; `--json` prints {name: {ref, tar, ...}} on stdout.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dockerfile import parse
from image_cache import (  # re-exported: tests and tools use them as build.<name>
    APT_SLIM,
    NAMES,
    POLICY_RC,
    ROOT,
    SLIM_DPKG,
    BuildError,
    BuiltImage,
    base_key,
    base_suite,
    cache_root,
    cached_image,
    debian_sources,
    dockerfile_path,
    image_config,
    image_key,
    image_paths,
    log,
)
from image_steps import convert_whiteouts, execute, layer_tar

OCI_WRITER = Path(
    os.environ.get("MAINSAIL_OCI_WRITER") or ROOT / "deploy" / "testbed" / "oci_image.py"
)
KEEP_PREVIOUS = 1


def _finish_rootfs(rootfs: Path) -> None:
    """What mmdebstrap leaves of this host goes; the container runtime provides those files."""
    for name in ("etc/resolv.conf", "etc/hostname", "etc/hosts"):
        (rootfs / name).unlink(missing_ok=True)
    policy = rootfs / "usr" / "sbin" / "policy-rc.d"
    policy.write_text(POLICY_RC)
    policy.chmod(0o755)
    (rootfs / "etc" / "apt" / "apt.conf.d" / "90mainsail-slim").write_text(APT_SLIM)


@dataclass(frozen=True)
class BaseRootfs:
    key: str
    rootfs: Path
    tar: Path


def ensure_base(base: str) -> BaseRootfs:
    """The cached base root file system (a directory) and its layer tar; built on a miss."""
    suite, variant = base_suite(base)
    key = base_key(base)
    home = cache_root() / "base" / f"{suite}-{variant}-{key}"
    done = BaseRootfs(key, home / "rootfs", home / "layer.tar")
    if done.tar.is_file():
        return done
    home.parent.mkdir(parents=True, exist_ok=True)
    with _locked(home.parent / f".{home.name}.lock"):
        if done.tar.is_file():
            return done
        for stale in home.parent.glob(f".{home.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
        try:
            rootfs = tmp / "rootfs"
            cmd = [
                "mmdebstrap",
                f"--variant={variant}",
                "--mode=root",
                "--format=directory",
                *(f"--dpkgopt={opt}" for opt in SLIM_DPKG),
                # Docs were excluded for later installs; drop those of the base packages too.
                '--customize-hook=rm -rf "$1"/usr/share/man/* "$1"/usr/share/info/*',
                '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
                suite,
                str(rootfs),
            ]
            sources = debian_sources()
            if sources:
                cmd.append(sources)
            log(f"base {base}: mmdebstrap --variant={variant} {suite} (cold: about a minute)")
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                raise BuildError(f"mmdebstrap failed ({run.returncode}):\n{run.stderr[-4000:]}")
            _finish_rootfs(rootfs)
            layer_tar(rootfs, tmp / "layer.tar", exclude=("dev/*", "proc/*", "sys/*"))
            os.chmod(tmp, 0o755)
            shutil.rmtree(home, ignore_errors=True)
            os.replace(tmp, home)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        log(f"base {base}: built in {seconds:.0f} s, {done.tar.stat().st_size / 2**20:.0f} MiB")
    return done


class _locked:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _prune(name: str, keep: Path) -> None:
    """Remove older tars of `name`, keeping the newest `KEEP_PREVIOUS` besides `keep`."""
    others = sorted(
        (p for p in cache_root().glob(f"{name}-*.tar") if p != keep and p.stem[len(name) + 1 :]),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in others[KEEP_PREVIOUS:]:
        log(f"{name}: removing old {old.name}")
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def build(name: str, context: Path = ROOT) -> BuiltImage:
    """The image `name`, from the cache or built now."""
    if os.geteuid() != 0:
        raise BuildError("building needs root (chroot, mounts); Docker users: deploy/kind/up.sh")
    path = dockerfile_path(name)
    if not path.is_file():
        raise BuildError(f"no {path} (images: {', '.join(NAMES)})")
    text = path.read_text()
    spec = parse(text)
    key = image_key(text, spec, context)
    tar, meta = image_paths(name, key)
    if tar.is_file() and meta.is_file():
        return BuiltImage(**{**json.loads(meta.read_text()), "cached": True})
    base = ensure_base(spec.base)
    home = cache_root()
    with _locked(home / f".{name}.lock"):
        if tar.is_file() and meta.is_file():
            return BuiltImage(**{**json.loads(meta.read_text()), "cached": True})
        for stale in home.glob(f".{name}-*"):  # left by a build killed outright (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        started = time.monotonic()
        log(f"{name}: building {path.relative_to(ROOT)} (key {key})")
        work = Path(tempfile.mkdtemp(prefix=f".{name}-{key}.", dir=home))
        try:
            for sub in ("upper", "work", "merged"):
                (work / sub).mkdir()
            plan = {
                "dockerfile": str(path),
                "context": str(context),
                "lower": str(base.rootfs),
                "upper": str(work / "upper"),
                "work": str(work / "work"),
                "merged": str(work / "merged"),
            }
            (work / "plan.json").write_text(json.dumps(plan))
            cmd = ["unshare", "--mount", "--propagation", "private", "--", sys.executable]
            cmd += [str(Path(__file__).resolve()), "--execute", str(work / "plan.json")]
            if subprocess.run(cmd).returncode != 0:
                raise BuildError(f"{name}: a step failed (see above)")
            convert_whiteouts(work / "upper")
            layer_tar(work / "upper", work / "layer.tar")
            shutil.rmtree(work / "upper")
            (work / "config.json").write_text(json.dumps(image_config(spec)))
            ref = f"mainsail/{name}:{key}"
            writer = [sys.executable, str(OCI_WRITER), "--ref", ref, "--config"]
            writer += [str(work / "config.json"), "--out", str(work / "image.tar")]
            writer += ["--layer", str(base.tar), "--layer", str(work / "layer.tar")]
            subprocess.run(writer, check=True, stdout=subprocess.DEVNULL)
            os.replace(work / "image.tar", tar)
            built = BuiltImage(
                name=name,
                ref=ref,
                tar=str(tar),
                key=key,
                size_bytes=tar.stat().st_size,
                build_seconds=round(time.monotonic() - started, 1),
                cached=False,
            )
            meta.write_text(json.dumps(asdict(built), indent=2) + "\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        _prune(name, tar)
    log(f"{name}: built in {built.build_seconds:.0f} s, {built.size_bytes / 2**20:.0f} MiB")
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"images to build (default: {' '.join(NAMES)})")
    parser.add_argument("--json", action="store_true", help="print {name: image} as JSON")
    parser.add_argument("--print", dest="print_name", metavar="NAME", help="cached tar, no build")
    parser.add_argument("--execute", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so temporary directories are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.execute is not None:
            execute(args.execute)
            return 0
        if args.print_name:
            found = cached_image(args.print_name)
            if found is None:
                return 1
            print(found.tar)
            return 0
        names = args.names or list(NAMES)
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            parser.error(f"unknown image(s) {unknown}; known: {', '.join(NAMES)}")
        started = time.monotonic()
        built = {name: build(name) for name in names}
        total = time.monotonic() - started
        for image in built.values():
            state = "cached" if image.cached else f"built in {image.build_seconds:.0f} s"
            log(f"{image.ref}: {image.size_bytes / 2**20:.0f} MiB, {state}: {image.tar}")
        log(f"all images ready in {total:.0f} s")
        if args.json:
            print(json.dumps({n: asdict(i) for n, i in built.items()}, indent=2))
    except (BuildError, ValueError) as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
