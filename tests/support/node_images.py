"""The two small images every test node needs, built locally and cached by content hash.

No registry is reachable, so the pod sandbox image is `deploy/testbed/pause.c` compiled with
`gcc -static`, and the smoke tests' image is Debian's static busybox with its applets linked.
Each is written as an OCI image-layout tar by `deploy/testbed/oci_image.py` into
`~/.cache/mainsail/images/<name>-<hash>.tar`; the hash covers every input (source, compiler
version, busybox binary), so a warm cache does no work and a changed input makes a new tar.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
TESTBED = ROOT / "deploy" / "testbed"
PAUSE_REF = "mainsail/pause:testbed"
BUSYBOX_REF = "mainsail/busybox:testbed"
BUSYBOX_BINARY = Path("/bin/busybox")


def image_cache() -> Path:
    return Path(os.environ.get("MAINSAIL_CACHE", Path.home() / ".cache" / "mainsail")) / "images"


def oci_image_module() -> ModuleType:
    """deploy/testbed/oci_image.py, loaded by path (deploy/ is not a package)."""
    existing = sys.modules.get("mainsail_testbed_oci_image")
    if existing is not None:
        return existing
    spec = importlib.util.spec_from_file_location(
        "mainsail_testbed_oci_image", TESTBED / "oci_image.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tar_info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o755) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    return info


def _cached(name: str, digest: str, build: Callable[[Path], None]) -> Path:
    """`<cache>/<name>-<digest>.tar`, built by `build(tmp_out)` when missing."""
    target = image_cache() / f"{name}-{digest[:16]}.tar"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        out = Path(tmp) / "image.tar"
        build(out)
        os.replace(out, target)
    return target


def _gcc_version() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is needed to build the pause image (apt-get install gcc libc6-dev)")
    return subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout


def pause_image() -> Path:
    """The sandbox image: a static `pause` that sleeps until SIGTERM and reaps children."""
    source = (TESTBED / "pause.c").read_bytes()
    digest = hashlib.sha256(source + _gcc_version().encode()).hexdigest()

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            subprocess.run(
                ["gcc", "-static", "-Os", "-Wall", "-Wextra", "-Werror", "-s", "-o", str(binary),
                 str(TESTBED / "pause.c")],
                check=True, capture_output=True,
            )  # fmt: skip
            layer = Path(tmp) / "layer.tar"
            with tarfile.open(layer, "w:") as tar:
                info = _tar_info("pause")
                info.size = binary.stat().st_size
                with binary.open("rb") as src:
                    tar.addfile(info, src)
            oci_image_module().write_image(
                PAUSE_REF, [layer], {"Entrypoint": ["/pause"], "User": "65535:65535"}, out
            )

    return _cached("pause", digest, build)


def busybox_image() -> Path:
    """Debian's static busybox with every applet linked in /bin (sh, httpd, wget, nslookup...)."""
    if not BUSYBOX_BINARY.is_file():
        raise RuntimeError(f"{BUSYBOX_BINARY} missing (apt-get install busybox-static)")
    data = BUSYBOX_BINARY.read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    def build(out: Path) -> None:
        listing = subprocess.run(
            [str(BUSYBOX_BINARY), "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        with tempfile.TemporaryDirectory() as tmp:
            layer = Path(tmp) / "layer.tar"
            with tarfile.open(layer, "w:") as tar:
                for directory in ("bin", "etc", "tmp", "www"):
                    tar.addfile(
                        _tar_info(
                            directory, tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
                        )
                    )
                info = _tar_info("bin/busybox")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                for applet in sorted(set(listing) - {"busybox"}):
                    link = _tar_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
                    link.linkname = "busybox"
                    tar.addfile(link)
                for name, text in (
                    ("etc/passwd", "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"),
                    ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
                ):
                    raw = text.encode()
                    info = _tar_info(name, mode=0o644)
                    info.size = len(raw)
                    tar.addfile(info, io.BytesIO(raw))
            oci_image_module().write_image(
                BUSYBOX_REF, [layer], {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}, out
            )

    return _cached("busybox", digest, build)


DEBIAN_PYTHON_REF = "mainsail/debian-python:testbed"
_MMDEBSTRAP_ARGS = (
    "--variant=essential",
    "--include=python3-minimal,libpython3.11-stdlib",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "bookworm",
)


def debian_python_image() -> Path:
    """A Debian bookworm root file system with python3 (no pip, no project): the in-cluster
    client of the smoke tests (TLS to the API server with the pod's ServiceAccount)."""
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("mmdebstrap missing (apt-get install mmdebstrap)")
    digest = hashlib.sha256("\0".join(_MMDEBSTRAP_ARGS).encode()).hexdigest()

    def build(out: Path) -> None:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            rootfs = Path(tmp) / "rootfs.tar"
            proc = subprocess.run(
                ["nice", "-n", "10", "mmdebstrap", "--quiet", *_MMDEBSTRAP_ARGS, str(rootfs)],
                capture_output=True, text=True, timeout=1200,
            )  # fmt: skip
            if proc.returncode != 0:
                raise RuntimeError(f"mmdebstrap failed:\n{proc.stderr[-3000:]}")
            oci_image_module().write_image(
                DEBIAN_PYTHON_REF,
                [rootfs],
                {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["python3"]},
                out,
            )

    return _cached("debian-python", digest, build)
