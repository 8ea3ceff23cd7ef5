"""`run_pipeline`: one write of many commands, then their raw replies, over a pooled connection.

Why not redis-py's `Pipeline`: it spends 10-15 µs of Python per command (command stack,
per-command packing, response callbacks), as much as Redis itself spends on a small SET;
blocks of small models are stored and fetched by the hundred. Here the commands are packed
into RESP in one pass (values above 16 KiB are sent as their own buffers, never copied) and
the replies are read raw. redis-py still owns the connection: URL parsing, auth, TLS,
timeouts, pooling.

A connection that saw any error is discarded. A connection error is retried once on a
fresh connection (a pooled connection to a restarted server is stale); that is safe because
the tier's commands (SET, GET, EXISTS) are idempotent. Clients without a connection pool of
their own (Redis Cluster) go through the ordinary `Pipeline`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import redis

Arg = bytes | bytearray | memoryview
Value = Arg | tuple[Arg, ...]
"""One command argument; a tuple is sent as one argument made of its parts (no join)."""
Buffer = Arg | np.ndarray
"""Bytes to send: also a uint8 array (a whole `RespBatch`)."""
T = TypeVar("T")
_INLINE_MAX = 16 << 10


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


def run_pipeline(
    client: redis.Redis, commands: Sequence[Sequence[Value]], expect: bytes | None = None
) -> list[Any]:
    """Replies of ``commands`` in order (bytes, int or None); raises `redis.RedisError`.

    ``expect``: the raw reply every command gives on success (``b"+OK\r\n"`` for SET); the
    replies are then read as one block and compared, not parsed one by one, and the result
    is ``[]``. Any other reply raises `redis.ResponseError`.
    """
    if not commands:
        return []
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            args = [b"".join(a) if isinstance(a, tuple) else a for a in command]
            pipe.execute_command(*args)  # type: ignore[no-untyped-call]
        replies = list(pipe.execute())
        return [] if expect is not None else replies

    def receive(conn: Any) -> list[Any]:
        sock = getattr(conn, "_sock", None)
        if expect is not None and isinstance(sock, socket.socket):
            _expect_replies(sock, expect, len(commands))
            return []
        replies = [conn.read_response(disable_decoding=True) for _ in commands]
        return [] if expect is not None else replies

    return exchange(pool, pack(commands), receive)


def exchange(
    pool: Any,
    packed: Sequence[Buffer] | Callable[[], Iterable[Buffer]],
    receive: Callable[[Any], T],
) -> T:
    """Send ``packed`` on a pooled connection and return ``receive(connection)``.

    ``packed`` may be a function making the buffers as they are sent (called again for a
    retry), so the server works on the first while the next is being made.

    Raises `redis.RedisError`. A connection that saw any error is discarded; a connection
    error is retried once on a fresh connection (the tier's commands are idempotent).
    """
    for attempt in (0, 1):
        conn = pool.get_connection()
        try:
            buffers = packed() if callable(packed) else packed
            conn.send_packed_command(buffers, check_health=attempt == 0)
            return receive(conn)
        except TimeoutError as exc:
            conn.disconnect()
            raise redis.TimeoutError(str(exc)) from exc
        except (redis.ConnectionError, OSError) as exc:
            conn.disconnect()
            if attempt:
                if isinstance(exc, redis.RedisError):
                    raise
                raise redis.ConnectionError(str(exc)) from exc
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
    raise AssertionError("unreachable")


def _expect_replies(sock: socket.socket, expect: bytes, count: int) -> None:
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
