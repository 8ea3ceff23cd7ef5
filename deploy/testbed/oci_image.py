"""Write an OCI image-layout tar from plain layer tars, with the Python standard library only.

The test bed has no container engine and no registry: images are built as tar files and
imported into the node's containerd with `ctr -n k8s.io images import`. This module turns
uncompressed layer tars plus a small runtime config into that archive (oci-layout, index.json,
blobs/sha256/...). Output is deterministic: the same inputs give the same bytes, so callers can
cache images by content hash.

CLI:
    python deploy/testbed/oci_image.py --ref mainsail/router:dev \\
        --layer base.tar --layer app.tar --config cfg.json --out router.tar

cfg.json holds any of Env (list of "K=V"), Entrypoint, Cmd (lists of strings), WorkingDir,
User (strings) and Labels (object of strings). The reference is normalised the way containerd
and the kubelet normalise it (`mainsail/router:dev` -> `docker.io/mainsail/router:dev`), so a
pod naming `mainsail/router:dev` with `imagePullPolicy: Never` finds the imported image.

Module: `write_image(ref, layers, config, out) -> ImageInfo`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG_KEYS = {
    "Env": "list",
    "Entrypoint": "list",
    "Cmd": "list",
    "WorkingDir": "str",
    "User": "str",
    "Labels": "dict",
}
_CHUNK = 1 << 20


class ImageError(ValueError):
    """Bad input: names the field or file at fault."""


@dataclass(frozen=True)
class ImageInfo:
    """What was written: the normalised reference and the digests a caller may record."""

    ref: str
    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    path: Path


def normalize_ref(ref: str) -> str:
    """`name[:tag]` -> `docker.io/library/name:tag` style full reference, as containerd reads it."""
    if not ref or any(c.isspace() for c in ref) or "@" in ref:
        raise ImageError(f"--ref: {ref!r} is not a name[:tag] image reference")
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1 :]
    if not name or not tag or name != name.lower():
        raise ImageError(f"--ref: {ref!r} is not a name[:tag] image reference (lowercase name)")
    first, _, rest = name.partition("/")
    if not rest:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return f"{name}:{tag}"


def validate_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check the runtime config's keys and types; returns a copy with only the given keys."""
    if not isinstance(config, Mapping):
        raise ImageError("config: must be a JSON object")
    out: dict[str, Any] = {}
    for key, value in config.items():
        kind = CONFIG_KEYS.get(key)
        if kind is None:
            raise ImageError(f"config.{key}: unknown key (allowed: {', '.join(CONFIG_KEYS)})")
        if kind == "list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ImageError(f"config.{key}: must be a list of strings")
            if key == "Env" and not all("=" in v for v in value):
                raise ImageError("config.Env: every entry must be NAME=value")
        elif kind == "str":
            if not isinstance(value, str):
                raise ImageError(f"config.{key}: must be a string")
        elif not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise ImageError(f"config.{key}: must be an object of strings")
        out[key] = value
    return out


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as src:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return f"sha256:{digest.hexdigest()}", size


def _check_layer(path: Path) -> None:
    if not path.is_file():
        raise ImageError(f"--layer: {path} is not a file")
    try:
        with tarfile.open(path, "r:") as tar:
            tar.next()
    except tarfile.TarError as exc:
        raise ImageError(f"--layer: {path} is not an uncompressed tar ({exc})") from exc


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _add(tar: tarfile.TarFile, name: str, size: int, src: BinaryIO, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode
    info.mtime = 0
    tar.addfile(info, src)


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 0
    tar.addfile(info)


def write_image(
    ref: str,
    layers: Sequence[Path | str],
    config: Mapping[str, Any],
    out: Path | str,
    architecture: str = "amd64",
) -> ImageInfo:
    """Write the OCI image-layout tar for `layers` (bottom first) and `config` to `out`."""
    full_ref = normalize_ref(ref)
    runtime = validate_config(config)
    paths = [Path(p) for p in layers]
    if not paths:
        raise ImageError("--layer: at least one layer tar is required")
    for path in paths:
        _check_layer(path)
    layer_descs = []
    for path in paths:
        digest, size = _sha256_file(path)
        layer_descs.append((path, digest, size))
    diff_ids = [digest for _, digest, _ in layer_descs]
    history = {"created": "1970-01-01T00:00:00Z", "created_by": "oci_image.py"}
    image_config = {
        "architecture": architecture,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [history] * len(paths),
    }
    config_blob = _canonical(image_config)
    config_digest = f"sha256:{hashlib.sha256(config_blob).hexdigest()}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_blob)},
        "layers": [
            {"mediaType": MEDIA_LAYER, "digest": digest, "size": size}
            for _, digest, size in layer_descs
        ],
    }
    manifest_blob = _canonical(manifest)
    manifest_digest = f"sha256:{hashlib.sha256(manifest_blob).hexdigest()}"
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_blob),
                "platform": {"architecture": architecture, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": full_ref,
                    "org.opencontainers.image.ref.name": full_ref.rsplit(":", 1)[1],
                },
            }
        ],
    }
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as tar:
            layout = _canonical({"imageLayoutVersion": "1.0.0"})
            _add(tar, "oci-layout", len(layout), io.BytesIO(layout))
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            seen: set[str] = set()
            for path, digest, size in layer_descs:
                if digest in seen:
                    continue
                seen.add(digest)
                with path.open("rb") as src:
                    _add(tar, f"blobs/sha256/{digest[7:]}", size, src)
            for digest, blob in ((config_digest, config_blob), (manifest_digest, manifest_blob)):
                _add(tar, f"blobs/sha256/{digest[7:]}", len(blob), io.BytesIO(blob))
            index_blob = _canonical(index)
            _add(tar, "index.json", len(index_blob), io.BytesIO(index_blob))
        for path, digest, _ in layer_descs:  # the layer must not have changed while copied
            if _sha256_file(path)[0] != digest:
                raise ImageError(f"--layer: {path} changed while the image was written")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return ImageInfo(
        ref=full_ref,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=tuple(diff_ids),
        path=out_path,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="image name[:tag], e.g. mainsail/router:dev")
    parser.add_argument(
        "--layer", action="append", required=True, type=Path, help="uncompressed tar, bottom first"
    )
    parser.add_argument("--config", type=Path, help="JSON: Env, Entrypoint, Cmd, WorkingDir, ...")
    parser.add_argument("--out", required=True, type=Path, help="image-layout tar to write")
    args = parser.parse_args(argv)
    try:
        config: Any = {}
        if args.config is not None:
            try:
                config = json.loads(args.config.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ImageError(f"--config: cannot read {args.config}: {exc}") from exc
        info = write_image(args.ref, args.layer, config, args.out)
    except ImageError as exc:
        print(f"oci_image: error: {exc}", file=sys.stderr)
        return 2
    print(f"{info.ref} {info.manifest_digest} {info.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
