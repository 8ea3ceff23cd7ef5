"""`get_into`: pipelined GETs whose values land straight in a tensor, with no copy in between.

Why: through redis-py a 2 MiB block is copied three times before it is a tensor (socket
buffer, parser buffer, `bytes` object) plus once more to decode, which halves fetch speed
for blocks of large models. Here each reply's header is read and checked against the
codec's, and its payload is received with `recv_into` directly into the block's row of the
staging tensor: one copy, done by the kernel.

redis-py still owns the connection (URL, auth, TLS, timeouts, pool); this module writes the
commands with `send_packed_command` and reads the replies from the connection's socket
(`resp.connection_socket`, a private attribute of redis-py's `Connection`); when it is absent
(another client type or a future redis-py), `get_into` returns None and the tier falls back to
ordinary GETs.
Any error discards the connection.
"""

from __future__ import annotations

import socket

import numpy as np
import redis
import torch

from mainsail.workers.kvtier.checksum import CHECKSUM_BYTES, block_checksum, first_corrupt
from mainsail.workers.kvtier.resp import (
    SMALL_BLOCK_BYTES,
    Buffer,
    RespBatch,
    connection_socket,
    pack,
    recv_rows,
)

_CHUNK = 1 << 20
_LINE_READ = 64 << 10  # bytes per read while looking for a reply header (payload rarely)


class _Replies:
    """Reads RESP replies from a socket, payloads straight into caller memory."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self._scratch: memoryview | None = None

    def _fill(self) -> None:
        data = self.sock.recv(_LINE_READ)
        if not data:
            raise redis.ConnectionError("connection closed by server")
        self.buf += data

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        out = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return out

    def into(self, target: memoryview) -> None:
        """Fill ``target`` exactly: buffered bytes first, then the socket."""
        n = min(len(self.buf), len(target))
        target[:n] = self.buf[:n]
        del self.buf[:n]
        while n < len(target):
            got = self.sock.recv_into(target[n:], len(target) - n)
            if not got:
                raise redis.ConnectionError("connection closed by server")
            n += got

    def skip(self, count: int) -> None:
        if self._scratch is None or len(self._scratch) < min(count, _CHUNK):
            self._scratch = memoryview(bytearray(min(max(count, 2), _CHUNK)))
        scratch = self._scratch
        while count:
            step = min(count, len(scratch))
            self.into(scratch[:step])
            count -= step


def get_into(
    client: redis.Redis,
    keys: np.ndarray,
    header: bytes,
    out: torch.Tensor,
    corrupt: list[int] | None = None,
) -> int | None:
    """GET ``keys`` (rows of `hex_keys`); values ``header + row + checksum`` land in ``out[i]``
    (a row whose checksum fails ends the run like a miss; ``corrupt[0]`` counts them).

    ``out`` is a contiguous CPU tensor. Returns how many leading keys existed with exactly
    that header and size (a miss or a foreign value ends the run; the rest of the replies is
    read and dropped), or None when the client offers no raw socket. Raises
    `redis.RedisError` on any failure. Small blocks (`SMALL_BLOCK_BYTES`) take `RespBatch`:
    the replies of the leading hits are received into one buffer, checked and copied with
    numpy; large ones are received straight into their rows.
    """
    pool = getattr(client, "connection_pool", None)
    if pool is None or not len(keys):
        return None if pool is None else 0
    if out.shape[0] < len(keys) or not out.is_contiguous() or out.device.type != "cpu":
        raise ValueError("get_into needs a contiguous CPU tensor with a row per key")
    rows = out.view(torch.uint8).reshape(out.shape[0], -1).numpy()
    row_bytes = rows.shape[1]
    small = row_bytes <= SMALL_BLOCK_BYTES
    if small:
        packed: list[Buffer] = [RespBatch(b"GET", keys.shape[1]).pack(keys).reshape(-1).data]
    else:
        packed = list(pack([(b"GET", k.tobytes()) for k in keys]))
    conn = pool.get_connection()
    try:
        conn.send_packed_command(packed)
        sock = connection_socket(conn)
        if sock is None:
            conn.disconnect()
            return None
        replies = _Replies(sock)
        good = consumed = 0
        bad = [0]
        if small:
            good, consumed = _leading_hits_into(replies, len(keys), header, rows, bad)
        good = _read_rest(replies, len(keys) - consumed, header, rows, good, bad, consumed == 0)
        if corrupt is not None:
            corrupt[0] += bad[0]
        return good
    except TimeoutError as exc:
        conn.disconnect()
        raise redis.TimeoutError(str(exc)) from exc
    except OSError as exc:
        conn.disconnect()
        raise redis.ConnectionError(str(exc)) from exc
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def _leading_hits_into(
    replies: _Replies, count: int, header: bytes, rows: np.ndarray, bad: list[int]
) -> tuple[int, int]:
    """Receive the leading hit replies as fixed-size rows; leave the rest to `_read_rest`.
    Returns (rows usable, replies consumed): a hit whose checksum fails ends the usable run
    (and is counted in ``bad``)."""
    row_bytes = rows.shape[1]
    value_bytes = row_bytes + CHECKSUM_BYTES
    prefix = b"$%d\r\n" % (len(header) + value_bytes) + header
    stride = len(prefix) + value_bytes + 2
    want = np.frombuffer(prefix, dtype=np.uint8)

    def valid(batch: np.ndarray) -> np.ndarray:
        ok: np.ndarray = (
            (batch[:, : len(prefix)] == want).all(axis=1)
            & (batch[:, -2] == ord("\r"))
            & (batch[:, -1] == ord("\n"))
        )
        return ok

    buf, good, rest = recv_rows(replies.sock, count, stride, valid, prefix)
    if good:
        received = buf[: good * stride].reshape(good, stride)
        data = received[:, len(prefix) : len(prefix) + row_bytes]
        intact = first_corrupt(data, received[:, len(prefix) + row_bytes : -2])
        rows[:intact] = data[:intact]
        if intact < good:
            bad[0] += 1
        replies.buf = bytearray(rest)
        return intact, good
    replies.buf = bytearray(rest)
    return 0, 0


def _read_rest(
    replies: _Replies,
    count: int,
    header: bytes,
    rows: np.ndarray,
    good: int,
    bad: list[int],
    run: bool,
) -> int:
    """Read ``count`` more GET replies; while the run holds (``run``: no reply before broke
    it), hits go to ``rows[good:]``."""
    row_bytes = rows.shape[1]
    check = memoryview(bytearray(CHECKSUM_BYTES))
    for _ in range(count):
        line = replies.line()
        kind = line[:1]
        if kind == b"-":
            raise redis.ResponseError(line[1:].decode(errors="replace"))
        if kind == b"_":  # RESP3 null: a miss
            run = False
            continue
        if kind != b"$":  # RESP3 bulk errors ("!") included: never expected from GET
            raise redis.ConnectionError(f"unexpected reply to GET: {line[:32]!r}")
        size = int(line[1:])
        if size < 0:  # RESP2 null: a miss
            run = False
            continue
        if run and size == len(header) + row_bytes + CHECKSUM_BYTES:
            head = memoryview(bytearray(len(header)))
            replies.into(head)
            if head == header:
                replies.into(memoryview(rows[good]))
                replies.into(check)
                if block_checksum(rows[good]) == check.tobytes():
                    good += 1
                else:
                    bad[0] += 1
                    run = False
            else:
                run = False
                replies.skip(row_bytes + CHECKSUM_BYTES)
        else:
            run = False
            replies.skip(size)
        replies.skip(2)
    return good
