"""Commands over redis-py's pooled connections: `run_pipeline`/`exchange` (one write of many
commands, then their raw replies) and `ReplyPipe` (batches back to back on one connection).

Why not redis-py's `Pipeline`: it spends 10-15 µs of Python per command (command stack,
per-command packing, response callbacks), as much as Redis itself spends on a small SET;
blocks of small models are stored and fetched by the hundred. Here the commands are packed
into RESP in one pass (`resp.pack`: values above 16 KiB are sent as their own buffers, never
copied) and the replies are read raw (`resp`). redis-py still owns the connection: URL
parsing, auth, TLS, timeouts, pooling.

A connection that saw any error is discarded. A connection error is retried once on a
fresh connection (a pooled connection to a restarted server is stale); that is safe because
the tier's commands (SET, GET, EXISTS) are idempotent. Clients without a connection pool of
their own (Redis Cluster) go through the ordinary `Pipeline`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import redis

from mainsail.workers.kvtier.resp import Buffer, Value, connection_socket, expect_replies, pack

T = TypeVar("T")


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
        sock = connection_socket(conn)
        if expect is not None and sock is not None:
            expect_replies(sock, expect, len(commands))
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


Payload = Callable[[], Iterable[Buffer]]
"""Makes a batch's buffers as they are sent; called again to resend the batch."""


class ReplyPipe:
    """Batches sent back to back on one pooled connection, their replies read in order.

    Why: a writer that waits for a batch's replies before sending the next leaves Redis idle
    while it packs and the client idle while Redis stores. Here a caller sends batch N+1,
    then reads batch N's replies, so both work at once; the caller bounds what is in flight
    (replies wait in socket buffers meanwhile: Redis never blocks on a slow reader).

    The connection is held until `close`. A connection error is retried once, on a fresh
    connection with every batch still unanswered sent again (the tier's commands are
    idempotent), as `exchange` does; any other error (a timeout, an error reply) discards
    the connection and raises, after which every batch the pipe held is lost.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._pending: deque[tuple[Payload, Callable[[Any], None]]] = deque()
        self._retried = False
        try:
            self._conn: Any = pool.get_connection()
        except OSError as exc:
            _raise(exc, exc)

    @property
    def in_flight(self) -> int:
        """Batches sent whose replies were not read yet."""
        return len(self._pending)

    def send(self, payload: Payload, receive: Callable[[Any], None]) -> None:
        """Send a batch; ``receive(connection)`` will read (and check) its replies."""
        if self._conn is None:
            raise redis.ConnectionError("ReplyPipe is closed")
        self._pending.append((payload, receive))
        try:
            self._conn.send_packed_command(payload(), check_health=False)
        except BaseException as exc:
            self._recover(exc)  # resends this batch too

    def receive(self) -> None:
        """Read the replies of the oldest batch in flight; raises if any is not as expected."""
        if self._conn is None or not self._pending:
            raise redis.ConnectionError("ReplyPipe: no batch in flight")
        receive = self._pending[0][1]
        try:
            receive(self._conn)
        except BaseException as exc:
            self._recover(exc)
            try:
                receive(self._conn)
            except BaseException as again:
                self._drop()
                _raise(again, exc)
        self._pending.popleft()

    def close(self) -> None:
        """Give the connection back (discarded if replies are still unread)."""
        if self._pending:
            self._drop()
        elif self._conn is not None:
            self._pool.release(self._conn)
            self._conn = None

    def _recover(self, exc: BaseException) -> None:
        """Return only when every unanswered batch was resent on a fresh connection."""
        retry = (
            isinstance(exc, (redis.ConnectionError, OSError))
            and not isinstance(exc, TimeoutError)
            and not self._retried
        )
        self._drop(keep_pending=retry)
        if not retry:
            _raise(exc, exc)
        self._retried = True
        try:
            self._conn = self._pool.get_connection()
            for payload, _ in self._pending:
                self._conn.send_packed_command(payload(), check_health=False)
        except BaseException as again:
            self._drop()
            _raise(again, exc)

    def _drop(self, keep_pending: bool = False) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._pool.release(self._conn)
        self._conn = None
        if not keep_pending:
            self._pending.clear()


def _raise(exc: BaseException, cause: BaseException) -> NoReturn:
    """Raise ``exc``, an I/O error as a `redis.RedisError` (caused by ``cause``)."""
    if isinstance(exc, redis.RedisError) or not isinstance(exc, OSError):
        raise exc
    error = redis.TimeoutError if isinstance(exc, TimeoutError) else redis.ConnectionError
    raise error(str(exc)) from cause
