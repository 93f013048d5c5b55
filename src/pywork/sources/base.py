"""The :class:`Source` and :class:`Message` protocols (exported by :mod:`pywork.sources`)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["Message", "Source"]


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
