"""`BlockWriter` with two batches in flight, against a fake Redis on a socketpair.

The fake speaks just enough RESP: it counts the commands it receives and answers each with
``+OK`` (or ``-ERR`` where told to). It can hold a batch's replies back until the next batch
has arrived, which a writer that waits for each batch's replies before sending the next
would never get past. Real servers are in tests/integration/test_redis_kv_tier.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import redis
import torch

from mainsail.workers.kvtier import BlockCodec, BlockWriter, RedisKVTier

pytestmark = pytest.mark.unit

BATCH = 4  # blocks per writer batch in these tests
CODEC = BlockCodec(2, 16, 2, 16, torch.float32, "fp")  # 8 KiB blocks: the numpy-packed path
BIG = BlockCodec(2, 16, 32, 16, torch.float32, "fp")  # 128 KiB blocks: zero-copy values


class FakeRedis:
    """The server end of a socketpair: replies ``+OK`` per command, ``-ERR`` at ``errors``.

    ``hold``: the replies of batch k (commands ``k*BATCH ..``) are sent only once batch k+1
    arrived in full, or every command did (``total``).
    """

    def __init__(self, sock: socket.socket, total: int, errors: Iterable[int], hold: bool) -> None:
        self.sock = sock
        self.total, self.errors, self.hold = total, set(errors), hold
        self.received = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join(2.0)
        assert not self._thread.is_alive()

    def _reply(self, index: int) -> bytes:
        return b"-ERR boom\r\n" if index in self.errors else b"+OK\r\n"

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the client dropped the connection (error reply)
            self._answer()
        self.sock.close()

    def _answer(self) -> None:
        replied = 0
        for _ in self._commands():
            self.received += 1
            if self.hold and self.received < self.total:
                ready = max(0, (self.received // BATCH - 1) * BATCH)
            else:
                ready = self.received
            if ready > replied:
                self.sock.sendall(b"".join(self._reply(i) for i in range(replied, ready)))
                replied = ready

    def _commands(self) -> Iterator[None]:
        """One item per complete command received (arrays of bulk strings), until EOF."""
        buf = b""
        while True:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return
            buf += chunk
            while True:
                end = _command_end(buf)
                if end is None:
                    break
                buf = buf[end:]
                yield None


def _command_end(buf: bytes) -> int | None:
    """Where the RESP array at the start of ``buf`` ends, or None if it is incomplete."""
    line = buf.find(b"\r\n")
    if line < 0:
        return None
    pos, args = line + 2, int(buf[1:line])
    for _ in range(args):
        line = buf.find(b"\r\n", pos)
        if line < 0:
            return None
        pos = line + 2 + int(buf[pos + 1 : line]) + 2
        if pos > len(buf):
            return None
    return pos


class FakeConnection:
    """What `ReplyPipe` and `read_ok` use of a redis-py connection."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.disconnected = False

    def send_packed_command(self, buffers: Iterable[Any], check_health: bool = True) -> None:
        try:
            for buffer in buffers:
                self._sock.sendall(buffer)
        except OSError as exc:
            raise redis.ConnectionError(str(exc)) from exc

    def disconnect(self) -> None:
        self.disconnected = True
        self._sock.close()


class FakePool:
    """Hands out one socketpair connection per server, in order."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.conns = [FakeConnection(s) for s in socks]
        self.handed = 0
        self.released = 0

    def get_connection(self) -> FakeConnection:
        conn = self.conns[self.handed]
        self.handed += 1
        return conn

    def release(self, conn: FakeConnection) -> None:
        self.released += 1


class FakeClient:
    def __init__(self, pool: FakePool) -> None:
        self.connection_pool = pool


def _pair() -> tuple[socket.socket, socket.socket]:
    client, server = socket.socketpair()
    client.settimeout(2.0)  # a writer waiting for replies that never come fails, not hangs
    return client, server


def _writer(
    pool: FakePool, now: list[float], codec: BlockCodec = CODEC
) -> tuple[RedisKVTier, BlockWriter]:
    client: Any = FakeClient(pool)
    tier = RedisKVTier(client, "fp", backoff_s=10.0, clock=lambda: now[0])
    writer = BlockWriter(
        tier, codec, max_queue_blocks=64, max_batch_bytes=BATCH * codec.block_bytes()
    )
    return tier, writer


def _blocks(n: int, codec: BlockCodec = CODEC) -> torch.Tensor:
    return torch.randn((n, *codec.shape))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("codec", [CODEC, BIG], ids=["small", "big"])
def test_batches_overlap_and_count_once_their_replies_are_in(codec: BlockCodec) -> None:
    """The fake answers batch k only after batch k+1 arrived: a stop-and-wait writer would
    time out here; this one writes all three batches."""
    client, server = _pair()
    fake = FakeRedis(server, total=3 * BATCH, errors=(), hold=True)
    pool = FakePool([client])
    tier, writer = _writer(pool, [0.0], codec)
    try:
        hashes = list(range(100, 100 + 3 * BATCH))
        assert writer.submit_rows(hashes, _blocks(len(hashes), codec)) == len(hashes)
        assert writer.flush(5.0)
        assert writer.stats.written == len(hashes)
        assert writer.drain_stored() == hashes
        assert tier.stats.stored_blocks == len(hashes) and tier.stats.errors == 0
    finally:
        writer.close()
        client.close()
        fake.join()
    assert fake.received == 3 * BATCH
    assert pool.handed == 1 and pool.released == 1  # one connection for all the batches


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("error_at", "written"), [(1, 0), (BATCH + 2, BATCH)])
def test_an_error_reply_loses_its_batch_and_those_after_and_opens_the_circuit(
    error_at: int, written: int
) -> None:
    """``-ERR`` in batch 1: nothing counts (batch 2 was already in flight and is dropped
    with the connection). In batch 2: batch 1 counts, batch 2 does not."""
    client, server = _pair()
    fake = FakeRedis(server, total=2 * BATCH, errors=[error_at], hold=False)
    pool = FakePool([client])
    now = [0.0]
    tier, writer = _writer(pool, now)
    try:
        hashes = list(range(2 * BATCH))
        writer.submit_rows(hashes, _blocks(2 * BATCH))
        assert writer.flush(5.0)  # nothing hangs
        assert writer.stats.written == written
        assert writer.drain_stored() == hashes[:written]
        assert tier.stats.stored_blocks == written
        assert tier.stats.errors == 1 and not tier.available()
        assert pool.conns[0].disconnected  # the connection is dropped, not reused
        writer.submit_rows([77], _blocks(1))  # circuit open: dropped at no cost
        assert writer.flush(5.0)
        assert tier.stats.skipped_while_down == 1 and pool.handed == 1
    finally:
        writer.close()
        fake.join()


@pytest.mark.timeout(10)
def test_a_stale_connection_is_replaced_and_the_batches_resent() -> None:
    """The first connection's server is gone (a restarted Redis): both batches in flight go
    again on a fresh connection and count once."""
    stale, gone = _pair()
    gone.close()
    client, server = _pair()
    fake = FakeRedis(server, total=2 * BATCH, errors=(), hold=False)
    pool = FakePool([stale, client])
    tier, writer = _writer(pool, [0.0])
    try:
        hashes = list(range(2 * BATCH))
        writer.submit_rows(hashes, _blocks(2 * BATCH))
        assert writer.flush(5.0)
        assert writer.stats.written == 2 * BATCH and tier.stats.errors == 0
        assert pool.handed == 2 and pool.conns[0].disconnected
    finally:
        writer.close()
        client.close()
        fake.join()
    assert fake.received == 2 * BATCH
