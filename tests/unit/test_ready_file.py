"""`mainsail.spec.ready_file`: a launcher polling the ready file never reads half of it."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from mainsail.spec.ready_file import write_atomic, write_ready_file


def test_concurrent_reader_sees_only_whole_documents(tmp_path: Path) -> None:
    """A reader thread polls while the writer rewrites documents of changing size; every read
    that finds the file parses and is one of the written documents."""
    path = tmp_path / "router.ready"
    documents = [{"http_port": i, "pad": "x" * (i * 4096 % 200_000)} for i in range(1, 201)]
    texts = {json.dumps(d) for d in documents}
    stop = threading.Event()
    seen: list[str] = []
    bad: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            (seen if text in texts else bad).append(text[:80])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for document in documents:
            write_ready_file(path, document)
    finally:
        stop.set()
        reader.join(10)
    assert not bad, f"{len(bad)} partial reads, first: {bad[0]!r}"
    assert seen, "the reader never saw the file"
    assert json.loads(path.read_text()) == documents[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["router.ready"]  # no temporary left


def test_path_keeps_old_document_until_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the moment of the rename the new text is whole in a sibling file and the old one
    is still in place: the only change a reader can observe is old -> new."""
    path = tmp_path / "ready.json"
    path.write_text("old")
    real_replace = os.replace
    checked: list[str] = []

    def replace(src: str, dst: Path) -> None:
        assert Path(src).parent == path.parent
        assert Path(src).read_text() == "new" * 1000
        assert path.read_text() == "old"
        checked.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_atomic(path, "new" * 1000)
    assert checked and path.read_text() == "new" * 1000


def test_failed_write_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ready.json"
    path.write_text("old")

    def replace(src: str, dst: Path) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]
