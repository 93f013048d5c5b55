"""PulsarSource specifics on a real pulsar-lite broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.servers import PulsarLiteServer

pulsar = pytest.importorskip("pulsar")

from pywork.sources import PulsarSource  # noqa: E402
from pywork.sources.pulsar import ORIGIN_MESSAGE_ID, REAL_TOPIC, REASON  # noqa: E402


async def test_sources_share_one_client_and_dead_letters_keep_payload_and_reason(
    pulsar_server: PulsarLiteServer,
) -> None:
    topic = f"persistent://public/default/p-{uuid.uuid4().hex[:8]}"
    client = pulsar.asyncio.Client(pulsar_server.url)
    producer = await client.create_producer(topic)
    await producer.send(b"payload", properties={"origin": "test"})
    first = PulsarSource(pulsar_server.url, topic, "sub")
    second = PulsarSource(pulsar_server.url, topic, "other")
    try:
        # Given two subscriptions of one topic, started after the message was sent
        message = await asyncio.wait_for(anext(first), 10)
        copy = await asyncio.wait_for(anext(second), 10)
        # Then both start at the earliest message, through one shared client
        assert first.client is second.client is not None
        assert message.id == copy.id == str(message.raw.message_id())
        assert (message.data, message.attempt) == (b"payload", 1)
        # When one dead-letters it
        await first.dead_letter(message, "BAD_REQUEST (400): no")
        await copy.ack()
        dlq = await client.subscribe(
            f"{topic}-sub-DLQ", "inspect", initial_position=pulsar.InitialPosition.Earliest
        )
        dead = await asyncio.wait_for(dlq.receive(), 10)
        # Then the payload, its properties and the reason are in the dead-letter topic
        assert dead.data() == b"payload"
        properties = dead.properties()
        assert properties[REASON] == "BAD_REQUEST (400): no"
        assert properties[ORIGIN_MESSAGE_ID] == message.id
        assert properties[REAL_TOPIC].endswith(topic.rsplit("/", 1)[1])
        assert properties["origin"] == "test"
    finally:
        await first.close()
        await first.close()  # idempotent
        await second.close()
        await client.close()
    assert first.client is None
    with pytest.raises(StopAsyncIteration):
        await anext(first)


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="topic"):
        PulsarSource("pulsar://127.0.0.1:1", "", "sub")
    with pytest.raises(ValueError, match="receiver_queue_size"):
        PulsarSource("pulsar://127.0.0.1:1", "t", "sub", receiver_queue_size=0)
    assert PulsarSource("pulsar://x:1", "t", "s").dead_letter_topic == "t-s-DLQ"
