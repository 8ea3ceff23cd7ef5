"""`RespBatch`: a batch of same-shaped commands for small blocks, packed and checked with numpy.

Why: blocks of small models (the tiny test model's are 8 KiB) are stored and fetched by the
hundred, and Redis serves a small SET or GET in a few microseconds; a Python loop that packs
each command, formats each key and parses each reply costs more than that, so the tier ran
at a fifth of `redis-benchmark`. Every command of a batch has the same shape (the keys all
have the same length: prefix + 16 hex digits; the values all have the same length: the
codec's header + one block), so the whole batch is one ``uint8`` array of ``n`` equal rows:
the constant parts are broadcast, the keys hex-formatted in one vectorised pass, the block
data copied in with one strided copy. Replies of a fixed size (``:0``/``:1`` for EXISTS,
``+OK`` for SET, a hit for GET) are received into one buffer and checked the same way.

The copy into the batch array costs a memcpy per byte, so this path is for small blocks
(`SMALL_BLOCK_BYTES`); large blocks keep `resp_pipeline`'s zero-copy sends and
`bulk_get`'s receive straight into the staging tensor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis

SMALL_BLOCK_BYTES = 64 << 10
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def hex_keys(prefix: bytes, hashes: Sequence[int]) -> np.ndarray:
    """``prefix + b":" + hash as 16 hex digits`` for every hash, as rows of a uint8 array."""
    raw = np.array(hashes, dtype=">u8").view(np.uint8).reshape(len(hashes), 8)
    nibbles = np.empty((len(hashes), 16), dtype=np.uint8)
    nibbles[:, 0::2] = raw >> 4
    nibbles[:, 1::2] = raw & 15
    out = np.empty((len(hashes), len(prefix) + 17), dtype=np.uint8)
    out[:, : len(prefix) + 1] = np.frombuffer(prefix + b":", dtype=np.uint8)
    out[:, len(prefix) + 1 :] = _HEX[nibbles]
    return out


def _bulk(n: int) -> bytes:
    return b"$%d\r\n" % n


class RespBatch:
    """Packs ``verb key [value] [extra...]`` for rows of keys (and values) of fixed sizes.

    ``value_prefix``: bytes every value starts with (the codec header), followed by
    ``value_bytes`` bytes of row data; ``extra``: trailing constant arguments (``EX ttl``).
    """

    def __init__(
        self,
        verb: bytes,
        key_len: int,
        *,
        value_prefix: bytes | None = None,
        value_bytes: int = 0,
        extra: Sequence[bytes] = (),
    ) -> None:
        argc = 2 + (value_prefix is not None) + len(extra)
        head = b"*%d\r\n" % argc + _bulk(len(verb)) + verb + b"\r\n" + _bulk(key_len)
        self._head = np.frombuffer(head, dtype=np.uint8)
        self.key_len = key_len
        self.key_at = len(head)
        middle = b"\r\n"
        if value_prefix is not None:
            middle += _bulk(len(value_prefix) + value_bytes) + value_prefix
        self._middle = np.frombuffer(middle, dtype=np.uint8)
        self.data_at = self.key_at + key_len + len(middle)
        self.data_bytes = value_bytes if value_prefix is not None else 0
        tail = b"\r\n" if value_prefix is not None else b""
        tail += b"".join(_bulk(len(a)) + a + b"\r\n" for a in extra)
        self._tail = np.frombuffer(tail, dtype=np.uint8)
        self.row = self.data_at + self.data_bytes + len(tail)

    def pack(self, keys: np.ndarray, data: np.ndarray | None = None) -> np.ndarray:
        """The commands for ``keys`` (rows from `hex_keys`) and ``data`` (uint8 rows)."""
        n, key_len = keys.shape
        if key_len != self.key_len:
            raise ValueError(f"RespBatch.pack: keys of {key_len} bytes, expected {self.key_len}")
        out = np.empty((n, self.row), dtype=np.uint8)
        out[:, : self.key_at] = self._head
        out[:, self.key_at : self.key_at + key_len] = keys
        mid_end = self.key_at + key_len + len(self._middle)
        out[:, self.key_at + key_len : mid_end] = self._middle
        if self.data_bytes:
            if data is None or data.shape != (n, self.data_bytes):
                raise ValueError(f"RespBatch.pack needs {n} data rows of {self.data_bytes} bytes")
            out[:, mid_end : mid_end + self.data_bytes] = data
        out[:, self.row - len(self._tail) :] = self._tail
        return out


def equal_rows(expect: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A `recv_rows` check: the row is exactly ``expect`` (``+OK\r\n`` for SET)."""
    want = np.frombuffer(expect, dtype=np.uint8)

    def check(rows: np.ndarray) -> np.ndarray:
        ok: np.ndarray = (rows == want).all(axis=1)
        return ok

    return check


def exists_valid(rows: np.ndarray) -> np.ndarray:
    """A `recv_rows` check for 4-byte EXISTS replies: ``:0\r\n`` or ``:1\r\n``."""
    ok: np.ndarray = (
        (rows[:, 0] == ord(":"))
        & ((rows[:, 1] == ord("0")) | (rows[:, 1] == ord("1")))
        & (rows[:, 2] == ord("\r"))
        & (rows[:, 3] == ord("\n"))
    )
    return ok


def recv_rows(
    sock: socket.socket,
    count: int,
    row: int,
    valid: Callable[[np.ndarray], np.ndarray],
    prefix: bytes,
) -> tuple[np.ndarray, int, bytes]:
    """Receive up to ``count`` replies of ``row`` bytes each, as long as they are ``valid``.

    ``valid`` maps complete rows (k x row) to a bool per row; ``prefix`` is what every valid
    reply starts with, checked on a row still arriving, so a shorter reply (a miss, an
    error) is noticed without waiting for bytes that never come. Returns the buffer (rows
    ``[:good]`` valid), ``good``, and the bytes received after those rows (the start of the
    first other reply, for a general parser to continue from).
    """
    want = count * row
    buf = np.empty(want, dtype=np.uint8)
    view = memoryview(buf)  # type: ignore[arg-type]
    head = np.frombuffer(prefix, dtype=np.uint8)
    n = checked = 0
    while checked < count:
        got = sock.recv_into(view[n:], want - n)
        if not got:
            raise redis.ConnectionError("connection closed by server")
        n += got
        full = n // row
        if full > checked:
            ok = valid(buf[checked * row : full * row].reshape(-1, row))
            bad = np.flatnonzero(~ok)
            if bad.size:
                good = checked + int(bad[0])
                return buf, good, bytes(view[good * row : n])
            checked = full
        start = checked * row
        part = buf[start : min(n, start + len(head))]
        if checked < count and (part != head[: len(part)]).any():
            return buf, checked, bytes(view[start:n])
    return buf, count, b""


def read_ok(conn: Any, count: int) -> None:
    """Read ``count`` SET replies from a redis-py connection; any but ``+OK`` raises."""
    sock = getattr(conn, "_sock", None)
    if not isinstance(sock, socket.socket):
        for _ in range(count):
            conn.read_response(disable_decoding=True)  # an error reply raises
        return
    _, good, rest = recv_rows(sock, count, len(_OK), _ok_rows, _OK)
    if good < count:
        raise redis.ResponseError(rest[:200].decode(errors="replace"))


def read_exists(conn: Any, count: int) -> list[bool]:
    """Read ``count`` single-key EXISTS replies from a redis-py connection, as flags."""
    sock = getattr(conn, "_sock", None)
    if not isinstance(sock, socket.socket):
        return [bool(conn.read_response(disable_decoding=True)) for _ in range(count)]
    buf, good, rest = recv_rows(sock, count, 4, exists_valid, b":")
    if good < count:
        raise redis.ResponseError(rest[:200].decode(errors="replace"))
    flags: list[bool] = (buf.reshape(count, 4)[:, 1] == ord("1")).tolist()
    return flags


_OK = b"+OK\r\n"
_ok_rows = equal_rows(_OK)
