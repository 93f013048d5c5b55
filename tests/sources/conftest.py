"""One behavioural suite for every source: a `backend` fixture per kind of server.

A backend makes sources on a topic (Pulsar) or prefix (S3) of its own for each test,
publishes payloads, reads the dead letters and tells what is left unsettled.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from tests.servers import PulsarLiteServer, SeaweedServer

SENTINEL = b'"sentinel"'


class PulsarBackend:
    kind = "pulsar"

    def __init__(self, server: PulsarLiteServer) -> None:
        import pulsar.asyncio

        self.url = server.url
        self.topic = f"persistent://public/default/t-{uuid.uuid4().hex[:12]}"
        self.subscription = "pywork"
        self.client = pulsar.asyncio.Client(self.url, logger=_quiet_logger())
        self.sources: list[Any] = []
        self.producer: Any = None

    def source(self, **options: Any) -> Any:
        from pywork.sources import PulsarSource

        source = PulsarSource(self.url, self.topic, self.subscription, **options)
        self.sources.append(source)
        return source

    def child_args(self) -> list[str]:
        return ["pulsar", self.url, self.topic]

    async def publish(self, payloads: list[bytes]) -> None:
        if self.producer is None:
            self.producer = await self.client.create_producer(self.topic, batching_enabled=False)
        for payload in payloads:
            await self.producer.send(payload)

    async def dead(self, count: int) -> list[tuple[bytes, str]]:
        """The first `count` dead letters: (payload, reason)."""
        import pulsar

        consumer = await self.client.subscribe(
            f"{self.topic}-{self.subscription}-DLQ",
            f"inspect-{uuid.uuid4().hex[:8]}",
            initial_position=pulsar.InitialPosition.Earliest,
        )
        try:
            found = []
            for _ in range(count):
                message = await asyncio.wait_for(consumer.receive(), 10)
                found.append((message.data(), message.properties()["reason"]))
            return found
        finally:
            await consumer.close()

    async def unsettled(self) -> list[bytes]:
        """Payloads still in the subscription: those a new consumer sees before a sentinel."""
        for source in self.sources:  # they may hold prefetched messages
            await source.close()
        await self.publish([SENTINEL])
        source = self.source()
        seen: list[bytes] = []
        try:
            while True:
                message = await asyncio.wait_for(anext(source), 10)
                await message.ack()
                if message.raw.data() == SENTINEL:
                    return seen
                seen.append(message.raw.data())
        finally:
            await source.close()

    async def close(self) -> None:
        for source in self.sources:
            await source.close()
        await self.client.close()


class S3Backend:
    kind = "s3"

    def __init__(self, server: SeaweedServer) -> None:
        self.server = server
        self.endpoint_url = server.endpoint_url
        self.bucket = server.bucket
        self.prefix = f"t-{uuid.uuid4().hex[:12]}/"
        self.sources: list[Any] = []
        self._stack: Any = None
        self.client: Any = None
        self.count = 0

    async def open(self) -> None:
        import contextlib

        from aiobotocore.session import get_session

        self._stack = contextlib.AsyncExitStack()
        self.client = await self._stack.enter_async_context(
            get_session().create_client("s3", endpoint_url=self.endpoint_url)
        )

    def source(self, **options: Any) -> Any:
        from pywork.sources import S3Source

        options.setdefault("lease", 2.0)
        options.setdefault("poll_interval", 0.05)
        source = S3Source(self.bucket, self.prefix, endpoint_url=self.endpoint_url, **options)
        self.sources.append(source)
        return source

    def child_args(self) -> list[str]:
        return ["s3", self.endpoint_url, f"{self.bucket}/{self.prefix}"]

    async def publish(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.count += 1
            key = f"{self.prefix}{self.count:05d}"
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=payload)

    async def _keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", ())]
        return keys

    async def dead(self, count: int) -> list[tuple[bytes, str]]:
        keys = sorted(await self._keys(self.prefix + "dead/"))
        assert len(keys) >= count, keys
        found = []
        for key in keys[:count]:
            got = await self.client.get_object(Bucket=self.bucket, Key=key)
            body = await got["Body"].read()
            found.append((body, unquote(got["Metadata"]["reason"])))
        return found

    async def unsettled(self) -> list[bytes]:
        dead = self.prefix + "dead/"
        found = []
        for key in sorted(await self._keys(self.prefix)):
            if not key.startswith(dead):
                got = await self.client.get_object(Bucket=self.bucket, Key=key)
                found.append(await got["Body"].read())
        return found

    async def close(self) -> None:
        for source in self.sources:
            await source.close()
        if self._stack is not None:
            await self._stack.aclose()


def _quiet_logger() -> Any:
    import logging

    logger = logging.getLogger("pulsar.tests")
    logger.setLevel(logging.WARNING)
    return logger


@pytest.fixture
def s3_env(s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedServer]:
    """The AWS environment variables of the test S3 server (the usual credential chain)."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    yield s3_server


@pytest.fixture(params=["pulsar", "s3"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh topic (Pulsar) or prefix (S3) on a real server, for one test."""
    made: Any
    if request.param == "pulsar":
        made = PulsarBackend(request.getfixturevalue("pulsar_server"))
    else:
        request.getfixturevalue("s3_env")
        made = S3Backend(request.getfixturevalue("s3_server"))
        await made.open()
    try:
        yield made
    finally:
        await made.close()
