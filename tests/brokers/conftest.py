"""The `broker` fixture: every test of this directory that takes it runs once per backend.

Adding a backend means adding one entry to BACKENDS (and one branch in `_url`).
Redis and PostgreSQL come from the session servers of tests/conftest.py (skipped
locally when missing, failing in CI); each test gets its own key prefix / schema.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

import pywork
from pywork.brokers import Broker

#: backend name -> the module implementing it
BACKENDS = {
    "memory": "pywork.brokers.memory",
    "sqlite": "pywork.brokers.sqlite",
    "redis": "pywork.brokers.redis",
    "postgres": "pywork.brokers.postgres",
}

OpenBroker = Callable[..., Awaitable[Broker]]


def _url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """A function returning a new, isolated store URL of `backend` on each call."""
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.fail(f"{BACKENDS[backend]} does not exist yet: the {backend} broker is not written")
    if backend == "memory":
        return lambda: f"memory://t{uuid.uuid4().hex}"
    if backend == "sqlite":
        return lambda: f"sqlite:///{tmp_path / uuid.uuid4().hex}.db"
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        return lambda: f"{server.url}?prefix=t{uuid.uuid4().hex}"
    if backend == "postgres":
        server = request.getfixturevalue("postgres_server")
        return lambda: f"{server.url}?schema=t{uuid.uuid4().hex}"
    raise AssertionError(backend)


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    name: str = request.param
    return name


@pytest.fixture
def new_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Returns the URL of a new, empty store of the backend under test on each call."""
    return _url(backend, request, tmp_path)


@pytest.fixture
def broker_url(new_url: Callable[[], str]) -> str:
    """The URL of this test's store (another connect() to it shares the jobs)."""
    return new_url()


@pytest.fixture
async def open_broker(broker_url: str) -> AsyncIterator[OpenBroker]:
    """``await open_broker(url=broker_url, retention=3600.0)``; closed after the test."""
    opened: list[Broker] = []

    async def open_(url: str | None = None, *, retention: float = 3600.0) -> Broker:
        broker = await pywork.connect(url or broker_url, retention=retention)
        opened.append(broker)
        return broker

    yield open_
    for broker in reversed(opened):
        await broker.close()


@pytest.fixture
async def broker(open_broker: OpenBroker) -> Broker:
    """A broker on this test's own store."""
    return await open_broker()
