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
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dockerfile import CacheMount, Copy, Dockerfile, Run, Workdir, parse

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(__file__).resolve().parent
OCI_WRITER = Path(
    os.environ.get("MAINSAIL_OCI_WRITER") or ROOT / "deploy" / "testbed" / "oci_image.py"
)
NAMES = ("operator", "router", "worker", "redis")
BUILDER_VERSION = "2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The base images this builder knows, as (suite, mmdebstrap variant). `slim` drops docs and
# manuals like Debian's slim images do; the settings stay in the image for later apt runs.
BASES = {"debian:bookworm-slim": ("bookworm", "apt")}
SLIM_DPKG = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
# A container engine's debian image refuses to start services from package scripts; so does ours.
POLICY_RC = "#!/bin/sh\nexit 101\n"
# Like a slim image: apt keeps neither its binary caches nor the downloaded packages.
APT_SLIM = (
    'Dir::Cache::pkgcache "";\n'
    'Dir::Cache::srcpkgcache "";\n'
    'APT::Keep-Downloaded-Packages "false";\n'
    'Acquire::Languages "none";\n'
)
KEEP_PREVIOUS = 1


class BuildError(RuntimeError):
    """A build failed; the message says which step or tool."""


def cache_root() -> Path:
    base = os.environ.get("MAINSAIL_CACHE") or str(Path.home() / ".cache" / "mainsail")
    return Path(base) / "images"


def log(message: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the build context ---------------------------------------------------------------------


def ignore_patterns(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(rel: str, patterns: Sequence[str]) -> bool:
    """`.dockerignore` matching for the forms we use: `name`, `dir/x*` and `**/name`."""
    parts = rel.split("/")
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatchcase("/".join(parts[i:]), tail) for i in range(len(parts))):
                return True
            if any(fnmatchcase(part, tail) for part in parts):
                return True
        elif any(fnmatchcase("/".join(parts[: i + 1]), pattern) for i in range(len(parts))):
            return True
    return False


def context_files(context: Path, source: str, patterns: Sequence[str]) -> Iterator[str]:
    """Relative paths of the files and symlinks under `source` (or `source` itself), sorted."""
    top = context / source
    if not top.exists() and not top.is_symlink():
        raise BuildError(f"COPY {source}: no such file in the build context {context}")
    if ignored(source, patterns):
        return
    if not top.is_dir() or top.is_symlink():
        yield source
        return
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, context)
        dirnames[:] = sorted(d for d in dirnames if not ignored(f"{rel_dir}/{d}", patterns))
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}"
            if not ignored(rel, patterns):
                yield rel


def _file_digest(path: Path) -> str:
    if path.is_symlink():
        return "link:" + os.readlink(path)
    digest = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def base_key(base: str) -> str:
    suite, variant = _base(base)
    sources = _debian_sources()
    parts = [BUILDER_VERSION, suite, variant, sources, Path(sources).read_text() if sources else ""]
    parts += [*SLIM_DPKG, POLICY_RC, APT_SLIM]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def image_key(dockerfile_text: str, spec: Dockerfile, context: Path) -> str:
    """Content hash of the Dockerfile, every file it copies (path, mode, bytes) and the base."""
    digest = hashlib.sha256()
    digest.update(f"{BUILDER_VERSION}\0{base_key(spec.base)}\0{dockerfile_text}\0".encode())
    patterns = ignore_patterns(context)
    for step in spec.steps:
        if isinstance(step, Copy):
            for source in step.sources:
                for rel in context_files(context, source, patterns):
                    path = context / rel
                    mode = path.lstat().st_mode & 0o111
                    digest.update(f"{rel}\0{mode:o}\0{_file_digest(path)}\0".encode())
    return digest.hexdigest()[:16]


# --- the base root file system ----------------------------------------------------------


def _base(base: str) -> tuple[str, str]:
    if base not in BASES:
        known = ", ".join(sorted(BASES))
        raise BuildError(f"FROM {base}: this builder knows only {known}")
    return BASES[base]


def _debian_sources() -> str:
    """The machine's configured Debian mirror (deb822 or one-line), or '' for mmdebstrap's."""
    configured = os.environ.get("MAINSAIL_DEBIAN_SOURCES")
    for candidate in (configured, "/etc/apt/sources.list.d/debian.sources"):
        if candidate and Path(candidate).is_file():
            return candidate
    return ""


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
    suite, variant = _base(base)
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
            sources = _debian_sources()
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


def image_config(spec: Dockerfile) -> dict[str, Any]:
    """The runtime config `oci_image.py` takes: Env, Entrypoint, Cmd, WorkingDir, User."""
    env = {"PATH": DEFAULT_PATH, **spec.env}
    config: dict[str, Any] = {
        "Env": [f"{key}={value}" for key, value in env.items()],
        "WorkingDir": spec.workdir,
    }
    if spec.user:
        config["User"] = spec.user
    if spec.entrypoint is not None:
        config["Entrypoint"] = spec.entrypoint
    if spec.cmd is not None:
        config["Cmd"] = spec.cmd
    if spec.labels:
        config["Labels"] = spec.labels
    return config


# --- images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltImage:
    name: str
    ref: str
    tar: str
    key: str
    size_bytes: int
    build_seconds: float
    cached: bool


def dockerfile_path(name: str) -> Path:
    return IMAGES / f"Dockerfile.{name}"


def image_paths(name: str, key: str) -> tuple[Path, Path]:
    home = cache_root()
    return home / f"{name}-{key}.tar", home / f"{name}-{key}.json"


def cached_image(name: str, context: Path = ROOT) -> BuiltImage | None:
    """The cached image of the current sources, if built; never builds."""
    text = dockerfile_path(name).read_text()
    key = image_key(text, parse(text), context)
    tar, meta = image_paths(name, key)
    if not tar.is_file() or not meta.is_file():
        return None
    return BuiltImage(**{**json.loads(meta.read_text()), "cached": True})


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
