"""The cluster tests' Redis: a real redis-server on a free port, nothing written outside
the test's directory, stopped afterwards."""

import socket

from .redisproc import running_redis


def test_redis_server_answers_and_stops(tmp_path):
    with running_redis(tmp_path / "redis") as redis:
        with socket.create_connection(("127.0.0.1", redis.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
        proc = redis.proc
    assert proc is not None and proc.poll() is not None
    assert list((tmp_path / "redis").iterdir()) == []  # no dump.rdb, no appendonly file
