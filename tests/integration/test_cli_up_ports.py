"""`mainsail up` with its spec's HTTP port held by another process: exit 1 with a message
naming `spec.router.httpPort` and the port, before Redis, Ray or the model are touched."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mainsail.cli.defaults import TINY_DEPLOYMENT

pytestmark = pytest.mark.integration


def test_mainsail_up_exits_1_with_the_message_before_starting_anything(tmp_path: Path) -> None:
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    held_port = int(held.getsockname()[1])
    document = yaml.safe_load(TINY_DEPLOYMENT)
    document["spec"]["router"]["httpPort"] = held_port
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(document))
    ready = tmp_path / "ready.json"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mainsail.cli.main",
                "up",
                "-f",
                str(path),
                "--grpc-port",
                "0",
                "--quiet",
                "--ready-file",
                str(ready),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        held.close()
    assert proc.returncode == 1, proc.stderr
    assert f"spec.router.httpPort {held_port} on 127.0.0.1 is already in use" in proc.stderr
    assert not ready.exists()
