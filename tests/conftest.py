"""Shared fixtures: real Redis and PostgreSQL servers, started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, RedisServer, missing


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (skips locally / fails in CI if missing)."""
    server = RedisServer()
    if server.binary is None:
        missing("redis-server")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on a free loopback port (skips locally / fails in CI if missing)."""
    server = PostgresServer()
    if server.bin is None:
        missing("PostgreSQL (initdb)")
    server.init()
    server.start()
    try:
        yield server
    finally:
        server.close()
