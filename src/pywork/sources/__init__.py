"""Sources: consume work that other systems produce (contract §15).

A :class:`Source` is an async iterator of :class:`Message`; :meth:`Worker.consume_source
<pywork.Worker.consume_source>` runs a job for each message and settles it with the same
status rules as a durable queue (ack, nack with backoff, dead letter)::

    Source ──__anext__──> Message ──run job.copy()──> status ──> ack / nack(delay) / dead_letter

Two implementations ship, each behind an extra and imported on first use:

- :class:`PulsarSource` (``pip install "pywork[pulsar]"``): a Shared subscription on an
  Apache Pulsar topic, on the official ``pulsar-client``;
- :class:`S3Source` (``pip install "pywork[s3]"``): the objects under an S3 prefix, each
  claimed by one consumer at a time with an expiring marker, on ``aiobotocore``.

Writing another (NATS JetStream, a Kafka-like log) means implementing the two protocols
below; see ``docs/sources.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pywork.sources.pulsar import PulsarSource
    from pywork.sources.s3 import S3Source

__all__ = ["Message", "PulsarSource", "S3Source", "Source"]


@runtime_checkable
class Message(Protocol):
    """One unit of work from a :class:`Source`, settled exactly once by its consumer.

    Attributes:
        id: the source's id for it (Pulsar: ``str(MessageId)``; S3: the object key); a
            redelivery keeps its id.
        data: the JSON-decoded payload, or bytes when it is not JSON.
        attempt: 1 on the first delivery; every redelivery (after a nack or a crash)
            counts one more.
    """

    @property
    def id(self) -> str: ...

    @property
    def data(self) -> Any: ...

    @property
    def attempt(self) -> int: ...

    async def ack(self) -> None:
        """The message was handled: remove it from the source for good."""
        ...

    async def nack(self, delay: float | None = None) -> None:
        """The message was not handled: deliver it again after `delay` seconds.

        None means the source's own default redelivery delay; 0 means at once.
        """
        ...


@runtime_checkable
class Source(Protocol):
    """An async iterator of :class:`Message`, with a dead letter and a close.

    ``__anext__`` waits for the next message (a source may end by raising
    StopAsyncIteration). Cancelling a pending ``__anext__`` loses nothing: a message
    the source was about to return is kept for the next call or released by
    :meth:`close`.
    """

    def __aiter__(self) -> Source: ...

    async def __anext__(self) -> Message: ...

    async def dead_letter(self, message: Message, reason: str) -> None:
        """Move `message` out of the stream, keeping its payload and `reason`."""
        ...

    async def close(self) -> None:
        """Release what the source holds (connections, unsettled messages). Idempotent."""
        ...


def __getattr__(name: str) -> Any:
    # the implementations need extras: import them only when asked for
    if name == "PulsarSource":
        from pywork.sources.pulsar import PulsarSource

        return PulsarSource
    if name == "S3Source":
        from pywork.sources.s3 import S3Source

        return S3Source
    raise AttributeError(f"module 'pywork.sources' has no attribute {name!r}")
