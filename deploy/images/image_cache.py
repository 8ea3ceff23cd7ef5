"""What an image is, before anything is built: its content key and where its tar is cached.

Why apart from the builder (`build.py`): finding the cached image of the current sources
(`build.py --print`, the tests, the bench) needs no root, no mounts and no build - only the
Dockerfile (parsed by `dockerfile.py`), the files its COPY steps take from the build context
(honouring `.dockerignore`), the base's identity and the cache layout. The key is a content
hash of all of those, so an image is rebuilt exactly when one of them changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dockerfile import Copy, Dockerfile, parse

ROOT = Path(__file__).resolve().parents[2]
IMAGES = Path(__file__).resolve().parent
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
    suite, variant = base_suite(base)
    sources = debian_sources()
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


# --- bases and runtime config ---------------------------------------------------------


def base_suite(base: str) -> tuple[str, str]:
    if base not in BASES:
        known = ", ".join(sorted(BASES))
        raise BuildError(f"FROM {base}: this builder knows only {known}")
    return BASES[base]


def debian_sources() -> str:
    """The machine's configured Debian mirror (deb822 or one-line), or '' for mmdebstrap's."""
    configured = os.environ.get("MAINSAIL_DEBIAN_SOURCES")
    for candidate in (configured, "/etc/apt/sources.list.d/debian.sources"):
        if candidate and Path(candidate).is_file():
            return candidate
    return ""


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
