"""The ready file: how a launched process tells its launcher what it bound.

A launcher (`mainsail up`, the test harnesses, the benchmarks) passes `--ready-file PATH` to
a router or to `mainsail up` and polls until PATH exists, then parses the JSON in it (the
router's bound `http_port`, `grpc_port`, `fleet_port`; `mainsail up`'s endpoints).

Why atomic: a plain `write_text` creates PATH empty and fills it afterwards, so a launcher
polling for existence could read an empty or half-written document and fail to parse it
(readers carried a read-again-until-it-parses loop for that). Here the document is written
to a temporary file in the same directory and renamed over PATH with `os.replace`, which is
atomic within one filesystem: PATH either does not exist or holds the whole document.
The file is readable by its owner only (mode 0600, `mkstemp`'s): `mainsail up`'s holds the
routers' admin token.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_ready_file(path: Path, document: Mapping[str, Any]) -> None:
    """Publish ``document`` as JSON at ``path`` in one step (see the module docstring)."""
    write_atomic(path, json.dumps(document))


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that no reader ever sees a partial file.

    The temporary file lives next to ``path`` (a rename across filesystems is not atomic) and
    is named after it with a leading dot, so a reader waiting for ``path`` never matches it;
    it is removed again if the write fails.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
