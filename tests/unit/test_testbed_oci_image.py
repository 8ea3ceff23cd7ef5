"""deploy/testbed/oci_image.py writes a valid, deterministic OCI image layout.

The cluster tier imports these tars into a real containerd; here we check the layout itself
(digests and sizes match their blobs, config carries the runtime settings and diff_ids) and the
error messages for bad input, without any daemon.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "testbed" / "oci_image.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oci_image", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["oci_image"] = module
    spec.loader.exec_module(module)
    return module


oci = _module()


def _layer(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _blobs(image: Path) -> dict[str, bytes]:
    with tarfile.open(image) as tar:
        out = {}
        for member in tar.getmembers():
            if member.isfile():
                src = tar.extractfile(member)
                assert src is not None
                out[member.name] = src.read()
        return out


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    algo, hexdigest = digest.split(":")
    data = files[f"blobs/{algo}/{hexdigest}"]
    assert hashlib.sha256(data).hexdigest() == hexdigest
    return data


def test_layout_digests_config_and_name(tmp_path: Path) -> None:
    base = _layer(tmp_path / "base.tar", {"bin/hello": b"#!/bin/sh\necho hi\n"})
    app = _layer(tmp_path / "app.tar", {"app/main.py": b"print('x')\n"})
    config: dict[str, Any] = {
        "Env": ["PATH=/bin", "A=b=c"],
        "Entrypoint": ["/bin/hello"],
        "Cmd": ["--flag"],
        "WorkingDir": "/app",
        "User": "1000:1000",
        "Labels": {"org.example": "yes"},
    }
    info = oci.write_image("mainsail/router:dev", [base, app], config, tmp_path / "img.tar")
    assert info.ref == "docker.io/mainsail/router:dev"
    files = _blobs(tmp_path / "img.tar")
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == "docker.io/mainsail/router:dev"
    assert desc["digest"] == info.manifest_digest
    manifest_bytes = _blob(files, desc["digest"])
    assert len(manifest_bytes) == desc["size"]
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == oci.MEDIA_MANIFEST
    layers = manifest["layers"]
    assert [layer["size"] for layer in layers] == [base.stat().st_size, app.stat().st_size]
    assert _blob(files, layers[0]["digest"]) == base.read_bytes()
    assert _blob(files, layers[1]["digest"]) == app.read_bytes()
    image_config = json.loads(_blob(files, manifest["config"]["digest"]))
    assert image_config["config"] == config
    assert image_config["rootfs"]["diff_ids"] == [layer["digest"] for layer in layers]
    assert (image_config["os"], image_config["architecture"]) == ("linux", "amd64")


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "l.tar", {"f": b"1"})
    first = oci.write_image("busybox:1", [layer], {"Cmd": ["sh"]}, tmp_path / "a.tar")
    second = oci.write_image("busybox:1", [layer], {"Cmd": ["sh"]}, tmp_path / "b.tar")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert first.manifest_digest == second.manifest_digest
    assert first.ref == "docker.io/library/busybox:1"


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("pause", "docker.io/library/pause:latest"),
        ("mainsail/worker:0.1", "docker.io/mainsail/worker:0.1"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost:5000/x/y:z", "localhost:5000/x/y:z"),
    ],
)
def test_normalize_ref(ref: str, expected: str) -> None:
    assert oci.normalize_ref(ref) == expected


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"Cmd": "sh"}, "config.Cmd"),
        ({"Env": ["NOEQUALS"]}, "config.Env"),
        ({"WorkingDir": 3}, "config.WorkingDir"),
        ({"Labels": {"a": 1}}, "config.Labels"),
        ({"Volumes": {}}, "config.Volumes"),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, config: dict[str, Any], field: str) -> None:
    layer = _layer(tmp_path / "l.tar", {"f": b"1"})
    with pytest.raises(oci.ImageError, match=field):
        oci.write_image("x:1", [layer], config, tmp_path / "o.tar")
    assert not (tmp_path / "o.tar").exists()


def test_cli_rejects_compressed_layer_and_bad_ref(tmp_path: Path) -> None:
    gz = tmp_path / "l.tar.gz"
    with tarfile.open(gz, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("empty"))
    cfg = tmp_path / "cfg.json"
    cfg.write_text("{}")
    base = [sys.executable, str(SCRIPT), "--config", str(cfg), "--out", str(tmp_path / "o.tar")]
    proc = subprocess.run(
        [*base, "--ref", "x:1", "--layer", str(gz)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "not an uncompressed tar" in proc.stderr
    layer = _layer(tmp_path / "l.tar", {"f": b"1"})
    proc = subprocess.run(
        [*base, "--ref", "Upper:1", "--layer", str(layer)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "--ref" in proc.stderr
    proc = subprocess.run(
        [*base, "--ref", "ok/name:1", "--layer", str(layer)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("docker.io/ok/name:1 sha256:")
