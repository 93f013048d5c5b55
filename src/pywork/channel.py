"""Channel: a closable async channel, like Go's ``chan``."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from pywork.errors import ChannelClosed, ChannelFull

__all__ = ["Channel"]

T = TypeVar("T")


class Channel(Generic[T]):
    """A closable FIFO channel for producers and consumers on one event loop.

    ``maxsize=0`` means unbounded; otherwise ``send`` waits for room. Several consumers
    may iterate the same channel: each value goes to exactly one of them. Iteration ends
    once the channel is closed and drained.

    Args:
        maxsize: the most values buffered at once; 0 for no limit.

    Raises:
        TypeError, ValueError: `maxsize` is not an int >= 0.
    """

    __slots__ = ("_buffer", "_closed", "_getters", "_maxsize", "_putters")

    def __init__(self, maxsize: int = 0) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"Channel maxsize must be an int >= 0 (0 = unbounded), got {maxsize!r}")
        if maxsize < 0:
            raise ValueError(f"Channel maxsize must be >= 0 (0 = unbounded), got {maxsize!r}")
        self._maxsize = maxsize
        self._buffer: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def maxsize(self) -> int:
        """The buffer bound (0 = unbounded)."""
        return self._maxsize

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (values may still be buffered)."""
        return self._closed

    def __len__(self) -> int:
        return len(self._buffer)

    def full(self) -> bool:
        """True when a bounded channel holds `maxsize` values."""
        return 0 < self._maxsize <= len(self._buffer)

    def send_nowait(self, value: T) -> None:
        """Buffer `value` at once.

        Raises:
            ChannelClosed: the channel is closed.
            ChannelFull: the channel is bounded and full.
        """
        if self._closed:
            raise ChannelClosed("cannot send on a closed Channel")
        if self.full():
            raise ChannelFull(f"Channel is full ({self._maxsize} values); use await send()")
        self._buffer.append(value)
        _wake_one(self._getters)

    async def send(self, value: T) -> None:
        """Send `value`, waiting for room in a bounded channel.

        Raises:
            ChannelClosed: the channel is (or becomes, while waiting) closed.
        """
        while self.full() and not self._closed:
            waiter = asyncio.get_running_loop().create_future()
            self._putters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if not self.full():
                    _wake_one(self._putters)  # pass our wake-up on
                raise
        self.send_nowait(value)

    def close(self) -> None:
        """Close the channel: sends fail from now on; receivers drain what is buffered."""
        if self._closed:
            return
        self._closed = True
        for waiter in (*self._getters, *self._putters):
            if not waiter.done():
                waiter.set_result(None)
        self._getters.clear()
        self._putters.clear()

    async def recv(self) -> T:
        """Receive the next value, waiting for one.

        Raises:
            ChannelClosed: the channel is closed and drained.
        """
        while not self._buffer:
            if self._closed:
                raise ChannelClosed("Channel is closed and drained")
            waiter = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except BaseException:
                waiter.cancel()
                if self._buffer:
                    _wake_one(self._getters)  # pass our wake-up on
                raise
        value = self._buffer.popleft()
        if self._putters:
            _wake_one(self._putters)
        return value

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except ChannelClosed:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Channel {state} buffered={len(self._buffer)} maxsize={self._maxsize}>"


def _wake_one(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return
