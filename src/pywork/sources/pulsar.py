"""PulsarSource: a Shared subscription on an Apache Pulsar topic (extra ``pywork[pulsar]``).

Built on the official ``pulsar-client`` (a C++ client with callbacks) through its
``pulsar.asyncio`` front, whose callbacks complete asyncio futures with
``loop.call_soon_threadsafe``: nothing here blocks the event loop.

- one ``pulsar.Client`` per ``service_url`` per process, shared by every PulsarSource
  (reference-counted: the last :meth:`PulsarSource.close` closes it);
- a Shared subscription (each message goes to one consumer of the subscription), created
  at the earliest message; per-message ack;
- ``nack(delay)``: the message stays unacknowledged for `delay` seconds, then is
  negatively acknowledged (Pulsar redelivers it after :data:`NACK_TICK` and counts a
  redelivery); if the process dies meanwhile, Pulsar redelivers it when its connection
  drops;
- ``attempt`` is Pulsar's redelivery count + 1, so a crash redelivery counts too;
- ``dead_letter``: the payload and properties are published to the dead-letter topic with
  the reason in the ``reason`` property (and ``REAL_TOPIC`` / ``ORIGIN_MESSAGE_ID``, as
  Pulsar's own dead-letter policy writes them), then the message is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, ClassVar

import msgspec

from pywork.sources.base import Message

try:
    import pulsar
    import pulsar.asyncio as pulsar_asyncio
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'PulsarSource needs the pulsar-client package: pip install "pywork[pulsar]"'
    ) from exc

__all__ = [
    "NACK_TICK",
    "ORIGIN_MESSAGE_ID",
    "REAL_TOPIC",
    "REASON",
    "PulsarMessage",
    "PulsarSource",
]

#: Seconds Pulsar waits after a negative acknowledgement before it redelivers.
NACK_TICK = 0.1
#: Properties of a dead letter: why it died, and where it came from.
REASON = "reason"
REAL_TOPIC = "REAL_TOPIC"
ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"

_logger = logging.getLogger("pywork.sources.pulsar")
_decoder = msgspec.json.Decoder()


class _SharedClient:
    """One pulsar client per (process, service_url), counted by its users."""

    clients: ClassVar[dict[tuple[int, str], _SharedClient]] = {}

    def __init__(self, service_url: str) -> None:
        self.client = pulsar_asyncio.Client(
            service_url, logger=logging.getLogger("pulsar"), operation_timeout_seconds=10
        )
        self.users = 0

    @classmethod
    def acquire(cls, service_url: str) -> Any:
        key = (os.getpid(), service_url)
        shared = cls.clients.get(key)
        if shared is None:
            shared = cls.clients[key] = cls(service_url)
        shared.users += 1
        return shared.client

    @classmethod
    async def release(cls, service_url: str) -> None:
        key = (os.getpid(), service_url)
        shared = cls.clients.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del cls.clients[key]
            try:
                await shared.client.close()
            except Exception as exc:
                _logger.warning("closing the pulsar client of %s failed: %s", service_url, exc)


def decode(payload: bytes) -> Any:
    """The JSON-decoded payload, or the bytes themselves when they are not JSON."""
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError:
        return payload


class PulsarMessage:
    """A message received by a :class:`PulsarSource`.

    Attributes:
        id: ``str(message_id)``; a redelivery keeps it.
        data: the JSON-decoded payload, or bytes.
        attempt: Pulsar's redelivery count + 1.
        properties: the message's properties.
        raw: the ``pulsar.Message``.
    """

    __slots__ = ("_settled", "_source", "attempt", "data", "id", "properties", "raw")

    def __init__(self, source: PulsarSource, raw: Any) -> None:
        self._source = source
        self.raw = raw
        self.id: str = str(raw.message_id())
        self.data: Any = decode(raw.data())
        self.attempt: int = int(raw.redelivery_count()) + 1
        self.properties: dict[str, str] = dict(raw.properties())
        self._settled = False

    async def ack(self) -> None:
        """Acknowledge the message (this subscription will not see it again)."""
        if not self._settled:
            self._settled = True
            await self._source._ack(self)

    async def nack(self, delay: float | None = None) -> None:
        """Have Pulsar deliver it again after `delay` seconds (None or 0: at once)."""
        if not self._settled:
            self._settled = True
            await self._source._nack(self, delay or 0.0)

    def __repr__(self) -> str:
        return f"<PulsarMessage {self.id} attempt={self.attempt}>"


class PulsarSource:
    """The messages of a Pulsar topic, through a Shared subscription.

    Args:
        service_url: such as ``"pulsar://localhost:6650"``.
        topic: the topic to consume (``"jobs"`` or ``"persistent://public/default/jobs"``).
        subscription: the subscription name; every consumer of the same name shares the
            topic's messages, each message going to one of them.
        dead_letter_topic: where :meth:`dead_letter` publishes; default
            ``f"{topic}-{subscription}-DLQ"``.
        receiver_queue_size: messages the client prefetches from the broker; other
            consumers of the subscription cannot take those meanwhile.

    Iterating subscribes on first use (at the earliest message for a new subscription)
    and never ends by itself; :meth:`close` ends it and releases unacknowledged messages.
    """

    def __init__(
        self,
        service_url: str,
        topic: str,
        subscription: str,
        *,
        dead_letter_topic: str | None = None,
        receiver_queue_size: int = 100,
    ) -> None:
        for name, value in (
            ("service_url", service_url),
            ("topic", topic),
            ("subscription", subscription),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str, got {value!r}")
        if dead_letter_topic is not None and (
            not isinstance(dead_letter_topic, str) or not dead_letter_topic
        ):
            raise ValueError(f"dead_letter_topic must be None or a non-empty str, got {topic!r}")
        if isinstance(receiver_queue_size, bool) or not isinstance(receiver_queue_size, int):
            raise TypeError(f"receiver_queue_size must be an int, got {receiver_queue_size!r}")
        if receiver_queue_size < 1:
            raise ValueError(f"receiver_queue_size must be >= 1, got {receiver_queue_size!r}")
        self.service_url = service_url
        self.topic = topic
        self.subscription = subscription
        self.dead_letter_topic = dead_letter_topic or f"{topic}-{subscription}-DLQ"
        self.receiver_queue_size = receiver_queue_size
        self._client: Any = None
        self._consumer: Any = None
        self._dead_producer: Any = None
        self._opening: asyncio.Lock | None = None
        self._queue: asyncio.Queue[Any] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._timers: dict[str, tuple[asyncio.TimerHandle, PulsarMessage]] = {}
        self._nacking: set[asyncio.Task[None]] = set()  # delayed nacks being sent
        self._closed = False

    @property
    def client(self) -> Any:
        """The ``pulsar.asyncio.Client`` shared by this process's PulsarSources of
        `service_url`, or None before the first message and after :meth:`close`."""
        return self._client

    # iteration ------------------------------------------------------------------
    def __aiter__(self) -> PulsarSource:
        return self

    async def __anext__(self) -> PulsarMessage:
        """The next message (waits for one); StopAsyncIteration once closed."""
        if self._closed:
            raise StopAsyncIteration
        await self._open()
        assert self._queue is not None
        item = await self._queue.get()
        if isinstance(item, BaseException):
            if isinstance(item, StopAsyncIteration):
                self._queue.put_nowait(item)  # every later call ends too
            raise item
        return PulsarMessage(self, item)

    async def _open(self) -> None:
        if self._consumer is not None:
            return
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._consumer is not None or self._closed:
                return
            client = _SharedClient.acquire(self.service_url)
            try:
                consumer = await client.subscribe(
                    self.topic,
                    self.subscription,
                    consumer_type=pulsar.ConsumerType.Shared,
                    initial_position=pulsar.InitialPosition.Earliest,
                    receiver_queue_size=self.receiver_queue_size,
                    negative_ack_redelivery_delay_ms=int(NACK_TICK * 1000),
                )
            except BaseException:
                await _SharedClient.release(self.service_url)
                raise
            self._client, self._consumer = client, consumer
            self._queue = asyncio.Queue(maxsize=1)
            self._pump = asyncio.get_running_loop().create_task(
                self._receive_loop(consumer), name=f"pywork-pulsar-{self.topic}"
            )

    async def _receive_loop(self, consumer: Any) -> None:
        """Move received messages to the queue (owned by the source; cancelled by close)."""
        assert self._queue is not None
        while True:
            try:
                raw = await consumer.receive()
            except pulsar_asyncio.PulsarException as exc:
                if exc.error() == pulsar.Result.AlreadyClosed:
                    await self._queue.put(StopAsyncIteration())
                    return
                await self._queue.put(exc)
                await asyncio.sleep(0.5)
                continue
            await self._queue.put(raw)

    # settling -------------------------------------------------------------------
    async def _ack(self, message: PulsarMessage) -> None:
        await self._consumer.acknowledge(message.raw)

    async def _nack(self, message: PulsarMessage, delay: float) -> None:
        if delay <= NACK_TICK or self._closed:
            await self._nack_now(message)
            return
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay - NACK_TICK, self._nack_due, message)
        self._timers[message.id] = (handle, message)

    def _nack_due(self, message: PulsarMessage) -> None:
        self._timers.pop(message.id, None)
        task = asyncio.get_running_loop().create_task(self._nack_now(message))
        self._nacking.add(task)
        task.add_done_callback(self._nacking.discard)

    async def _nack_now(self, message: PulsarMessage) -> None:
        if self._consumer is None:
            return  # closed: the broker redelivers what was not acknowledged
        try:
            await self._consumer.negative_acknowledge(message.raw)
        except Exception as exc:  # the broker redelivers it when the consumer closes
            _logger.warning("negative ack of %s failed: %s", message.id, exc)

    async def dead_letter(self, message: Message, reason: str) -> None:
        """Publish `message` to the dead-letter topic with `reason`, then acknowledge it.

        Raises:
            TypeError: `message` did not come from a PulsarSource.
        """
        if not isinstance(message, PulsarMessage):
            raise TypeError(f"expected a message of a PulsarSource, got {message!r}")
        if message._settled:
            return
        if self._dead_producer is None:
            self._dead_producer = await self._client.create_producer(
                self.dead_letter_topic, batching_enabled=False
            )
        properties = {
            **message.properties,
            REASON: str(reason),
            REAL_TOPIC: str(message.raw.topic_name()),
            ORIGIN_MESSAGE_ID: message.id,
        }
        await self._dead_producer.send(message.raw.data(), properties=properties)
        await message.ack()

    async def close(self) -> None:
        """Close the subscription's consumer (unacknowledged messages go back to the
        subscription at once) and release the shared client. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle, _ in self._timers.values():
            handle.cancel()  # closing the consumer gives those messages back at once
        self._timers.clear()
        if self._nacking:
            await asyncio.wait(list(self._nacking))
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.wait([self._pump])
        consumer, producer = self._consumer, self._dead_producer
        self._consumer = self._dead_producer = None
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(StopAsyncIteration())
        for closable in (producer, consumer):
            if closable is not None:
                try:
                    await closable.close()
                except Exception as exc:
                    _logger.warning("closing a pulsar consumer/producer failed: %s", exc)
        if self._client is not None:
            self._client = None
            await _SharedClient.release(self.service_url)

    def __repr__(self) -> str:
        return f"<PulsarSource {self.service_url} {self.topic!r} sub={self.subscription!r}>"
