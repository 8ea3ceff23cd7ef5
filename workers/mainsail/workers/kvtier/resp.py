"""RESP, the Redis wire protocol, as the KV tier writes and reads it: the one module for it.

What is here: packing commands (`pack` for any commands, `RespBatch` for a batch of
same-shaped ones packed with numpy, `SetCommands` for the tier's SETs), checking replies
(`expect_replies`, `recv_rows`, `read_ok`, `read_exists`), and `connection_socket`, the one
place that reaches into redis-py's internals. The connections themselves (pooling, retry,
two batches in flight) are `pipeline.py`'s.

Why RESP by hand: redis-py spends 10-15 µs of Python per command and copies every value; the
tier stores and fetches blocks by the hundred. `RespBatch`: blocks of small models (the tiny
test model's are 8 KiB) are stored and fetched by the hundred, and Redis serves a small SET or
GET in a few microseconds; a Python loop that packs each command, formats each key and parses
each reply costs more than that. Every command of a batch has the same shape (the keys all
have the same length: prefix + 16 hex digits; the values all have the same length: the
codec's header + one block), so the whole batch is one ``uint8`` array of ``n`` equal rows:
the constant parts are broadcast, the keys hex-formatted in one vectorised pass, the block
data copied in with one strided copy. Replies of a fixed size (``:0``/``:1`` for EXISTS,
``+OK`` for SET, a hit for GET) are received into one buffer and checked the same way.

The copy into the batch array costs a memcpy per byte, so that path is for small blocks
(`SMALL_BLOCK_BYTES`); large blocks keep `pack`'s zero-copy sends and `bulk_get`'s receive
straight into the staging tensor.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import redis

Arg = bytes | bytearray | memoryview
Value = Arg | tuple[Arg, ...]
"""One command argument; a tuple is sent as one argument made of its parts (no join)."""
Buffer = Arg | np.ndarray
"""Bytes to send: also a uint8 array (a whole `RespBatch`)."""

SMALL_BLOCK_BYTES = 64 << 10
_INLINE_MAX = 16 << 10
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


def pack(commands: Sequence[Sequence[Value]]) -> list[Arg]:
    """RESP of ``commands``: small parts joined, parts above 16 KiB as their own buffers.

    Memoryviews must be one-dimensional bytes (as `BlockCodec.parts` makes them).
    """
    out: list[Arg] = []
    buf: list[Arg] = []
    add = buf.append
    for command in commands:
        add(b"*%d\r\n" % len(command))
        for arg in command:
            parts = arg if isinstance(arg, tuple) else (arg,)
            add(b"$%d\r\n" % sum(map(len, parts)))
            for part in parts:
                if len(part) > _INLINE_MAX:
                    out.append(b"".join(buf))
                    out.append(part)
                    buf.clear()
                else:
                    add(part)
            add(b"\r\n")
    if buf:
        out.append(b"".join(buf))
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


TESTED_REDIS_PY = (5, 6, 7, 8)
"""Major versions of redis-py whose `Connection` keeps its socket in ``_sock`` (checked by
tests/unit/test_kvtier_resp_batch.py against the installed one)."""


def connection_socket(conn: Any) -> socket.socket | None:
    """The raw socket of a connected redis-py connection (TLS included: an `SSLSocket`), or
    None (another client type, a future redis-py): the one place the tier touches redis-py
    internals. Reading it
    directly is only safe right after `send_packed_command`, before redis-py parsed anything
    (its parser would hold buffered bytes otherwise); every caller here does exactly that,
    and falls back to `conn.read_response` when this is None."""
    sock = getattr(conn, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def expect_replies(sock: socket.socket, expect: bytes, count: int) -> None:
    """Read ``count`` replies that must each be ``expect``, in as few reads as possible."""
    want = len(expect) * count
    got = bytearray(want)
    view = memoryview(got)
    n = 0
    while n < want:
        step = sock.recv_into(view[n:], want - n)
        if not step:
            raise redis.ConnectionError("connection closed by server")
        n += step
        done = n - n % len(expect)
        if got[:done] != expect * (done // len(expect)):
            bad = next(i for i in range(0, done, len(expect)) if got[i : i + len(expect)] != expect)
            raise redis.ResponseError(bytes(got[bad : bad + 200]).decode(errors="replace"))


def read_ok(conn: Any, count: int) -> None:
    """Read ``count`` SET replies from a redis-py connection; any but ``+OK`` raises."""
    sock = connection_socket(conn)
    if sock is None:
        for _ in range(count):
            conn.read_response(disable_decoding=True)  # an error reply raises
        return
    _, good, rest = recv_rows(sock, count, len(_OK), _ok_rows, _OK)
    if good < count:
        raise redis.ResponseError(rest[:200].decode(errors="replace"))


def read_exists(conn: Any, count: int) -> list[bool]:
    """Read ``count`` single-key EXISTS replies from a redis-py connection, as flags."""
    sock = connection_socket(conn)
    if sock is None:
        return [bool(conn.read_response(disable_decoding=True)) for _ in range(count)]
    buf, good, rest = recv_rows(sock, count, 4, exists_valid, b":")
    if good < count:
        raise redis.ResponseError(rest[:200].decode(errors="replace"))
    flags: list[bool] = (buf.reshape(count, 4)[:, 1] == ord("1")).tolist()
    return flags


_OK = b"+OK\r\n"
_ok_rows = equal_rows(_OK)


class SetCommands:
    """The tier's SETs: keys ``<prefix>:<hash as 16 hex digits>``, an optional ``EX ttl``."""

    def __init__(self, prefix: bytes, ttl_s: int) -> None:
        self.prefix = prefix
        self._ttl: tuple[bytes, ...] = (b"EX", b"%d" % ttl_s) if ttl_s else ()
        self._batches: dict[tuple[bytes, int], RespBatch] = {}

    def key(self, block_hash: int) -> bytes:
        return b"%s:%016x" % (self.prefix, block_hash)

    def keys(self, block_hashes: Sequence[int]) -> np.ndarray:
        """`hex_keys` of ``block_hashes`` under this prefix."""
        return hex_keys(self.prefix, block_hashes)

    def commands(self, blocks: Mapping[int, Value]) -> list[tuple[Value, ...]]:
        """One SET per block (hash -> value or its parts), for `pack`."""
        return [(b"SET", self.key(h), v, *self._ttl) for h, v in blocks.items()]

    def batch(self, header: bytes, row_bytes: int) -> RespBatch:
        """The `RespBatch` of SETs whose values are ``header`` + ``row_bytes`` of data."""
        batch = self._batches.get((header, row_bytes))
        if batch is None:
            batch = RespBatch(
                b"SET",
                len(self.prefix) + 17,
                value_prefix=header,
                value_bytes=row_bytes,
                extra=self._ttl,
            )
            self._batches = {**self._batches, (header, row_bytes): batch}  # readers lock-free
        return batch
