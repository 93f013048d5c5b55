"""The test servers themselves: real processes answering on loopback."""

from __future__ import annotations

import socket

from tests.servers import PostgresServer, RedisServer


def _ping_redis(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64)


def test_redis_server_answers_and_restarts(redis_server: RedisServer) -> None:
    assert _ping_redis(redis_server.port) == b"+PONG\r\n"
    redis_server.restart()
    assert _ping_redis(redis_server.port) == b"+PONG\r\n"


def test_postgres_server_accepts_connections(postgres_server: PostgresServer) -> None:
    with socket.create_connection(("127.0.0.1", postgres_server.port), 5):
        pass
    assert postgres_server.url.startswith("postgresql://postgres@127.0.0.1:")
