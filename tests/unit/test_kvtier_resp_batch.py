"""`mainsail.workers.kvtier.resp`: the numpy-packed commands parse as the RESP redis-py would
send, reply checks, and the one reach into redis-py's internals on the installed version."""

from __future__ import annotations

import socket
from collections.abc import Callable

import numpy as np
import pytest
import redis

from mainsail.workers.kvtier.resp import (
    TESTED_REDIS_PY,
    RespBatch,
    SetCommands,
    connection_socket,
    equal_rows,
    exists_valid,
    hex_keys,
    pack,
    recv_rows,
)

pytestmark = pytest.mark.unit


def test_hex_keys_match_format() -> None:
    hashes = [0, 1, 0xDEADBEEF, 2**64 - 1, 0x0123456789ABCDEF]
    keys = hex_keys(b"mainsail:kv:ns", hashes)
    assert [k.tobytes() for k in keys] == [b"mainsail:kv:ns:%016x" % h for h in hashes]


def test_set_batch_equals_per_command_packing() -> None:
    header = b"HDR\x00\x01"
    keys = hex_keys(b"p", [5, 6, 7])
    data = np.arange(3 * 40, dtype=np.uint8).reshape(3, 40)
    batch = RespBatch(
        b"SET", keys.shape[1], value_prefix=header, value_bytes=40, extra=(b"EX", b"9")
    )
    got = batch.pack(keys, data).tobytes()
    want = b"".join(
        pack(
            [
                (b"SET", k.tobytes(), (header, d.tobytes()), b"EX", b"9")
                for k, d in zip(keys, data, strict=True)
            ]
        )
    )
    assert got == want
    get = RespBatch(b"GET", keys.shape[1]).pack(keys).tobytes()
    assert get == b"".join(pack([(b"GET", k.tobytes()) for k in keys]))
    with pytest.raises(ValueError):
        batch.pack(keys, data[:, :39])
    with pytest.raises(ValueError):
        batch.pack(hex_keys(b"pp", [1]), data[:1])


def test_reply_checks() -> None:
    rows = np.frombuffer(b":1\r\n:0\r\n-ERR", dtype=np.uint8).reshape(3, 4)
    assert exists_valid(rows).tolist() == [True, True, False]
    ok = np.frombuffer(b"+OK\r\n-OOM\r", dtype=np.uint8).reshape(2, 5)
    assert equal_rows(b"+OK\r\n")(ok).tolist() == [True, False]


def _starts(prefix: bytes) -> Callable[[np.ndarray], np.ndarray]:
    want = np.frombuffer(prefix, dtype=np.uint8)
    return lambda rows: (rows[:, : len(want)] == want).all(axis=1)


@pytest.mark.parametrize(
    ("stream", "good"),
    [(b"+OK\r\n+OK\r\n+OK\r\n", 3), (b"+OK\r\n-OOM no\r\n-OOM no\r\n", 1), (b"-ERR x\r\n", 0)],
)
def test_recv_rows_stops_at_the_first_other_reply(stream: bytes, good: int) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(2.0)
        b.sendall(stream)
        _, got, left = recv_rows(a, 3, 5, equal_rows(b"+OK\r\n"), b"+OK\r\n")
    assert got == good
    assert stream[good * 5 :].startswith(left)
    assert bool(left) == (good < 3)


def test_recv_rows_notices_a_short_last_reply_without_waiting() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(2.0)
        b.sendall(b"$3\r\nabc\r\n$-1\r\n")  # a hit, then a miss shorter than a hit
        _, got, left = recv_rows(a, 2, 9, _starts(b"$3\r\n"), b"$3\r\n")
        assert (got, left) == (1, b"$-1\r\n")
        b.close()
        with pytest.raises(redis.ConnectionError):
            recv_rows(a, 1, 5, equal_rows(b"+OK\r\n"), b"+OK\r\n")


def test_installed_redis_py_is_a_version_connection_socket_was_checked_on() -> None:
    """Fails on a redis-py major nobody checked: `connection_socket` reads a private field
    (the check on a live connection is in tests/integration/test_redis_kv_tier.py)."""
    major = int(redis.__version__.split(".")[0])
    assert major in TESTED_REDIS_PY, f"redis-py {redis.__version__}: check connection_socket"
    assert connection_socket(object()) is None


def test_set_commands_pack_the_tiers_keys_and_ttl() -> None:
    sets = SetCommands(b"mainsail:kv:fp", ttl_s=60)
    assert sets.key(0xAB) == b"mainsail:kv:fp:00000000000000ab"
    assert sets.commands({1: b"v"}) == [
        (b"SET", b"mainsail:kv:fp:0000000000000001", b"v", b"EX", b"60")
    ]
    data = np.zeros((2, 4), dtype=np.uint8)
    got = sets.batch(b"H", 4).pack(sets.keys([1, 2]), data).tobytes()
    assert got == b"".join(pack(sets.commands({1: (b"H", bytes(4)), 2: (b"H", bytes(4))})))
    assert sets.batch(b"H", 4) is sets.batch(b"H", 4)
    assert SetCommands(b"p", ttl_s=0).commands({1: b"v"})[0][3:] == ()
