"""Channel: a closable async FIFO channel (contract §4)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pywork import Channel, ChannelClosed, ChannelFull


async def drain(channel: Channel[Any]) -> list[Any]:
    return [value async for value in channel]


async def test_send_recv_fifo_and_len() -> None:
    channel: Channel[int] = Channel()
    assert channel.maxsize == 0
    assert not channel.closed
    for i in range(5):
        await channel.send(i)
    channel.send_nowait(5)
    assert len(channel) == 6
    assert not channel.full()  # unbounded
    assert [await channel.recv() for _ in range(6)] == [0, 1, 2, 3, 4, 5]
    assert len(channel) == 0


@pytest.mark.parametrize(
    ("maxsize", "exc"),
    [(-1, ValueError), (1.5, TypeError), ("3", TypeError), (True, TypeError), (None, TypeError)],
)
def test_maxsize_is_validated(maxsize: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="maxsize"):
        Channel(maxsize)


async def test_iteration_ends_once_closed_and_drained() -> None:
    channel: Channel[str] = Channel()
    for value in "abc":
        channel.send_nowait(value)
    channel.close()
    assert channel.closed
    assert await drain(channel) == ["a", "b", "c"]
    assert await drain(channel) == []
    with pytest.raises(ChannelClosed):
        await channel.recv()


async def test_close_wakes_waiting_receivers() -> None:
    channel: Channel[int] = Channel()
    consumers = [asyncio.create_task(drain(channel)) for _ in range(3)]
    await asyncio.sleep(0.01)
    channel.close()
    results = await asyncio.wait_for(asyncio.gather(*consumers), 5)
    assert results == [[], [], []]


async def test_sending_on_a_closed_channel_raises() -> None:
    channel: Channel[int] = Channel()
    channel.close()
    channel.close()  # idempotent
    with pytest.raises(ChannelClosed):
        channel.send_nowait(1)
    with pytest.raises(ChannelClosed):
        await channel.send(1)
    with pytest.raises(RuntimeError):  # ChannelClosed is a RuntimeError
        await channel.send(1)


async def test_send_nowait_on_a_full_channel_raises_channel_full() -> None:
    channel: Channel[int] = Channel(2)
    channel.send_nowait(1)
    channel.send_nowait(2)
    assert channel.full()
    with pytest.raises(ChannelFull, match="full"):
        channel.send_nowait(3)
    assert len(channel) == 2
    assert await channel.recv() == 1
    channel.send_nowait(3)
    assert [await channel.recv(), await channel.recv()] == [2, 3]


async def test_bounded_send_waits_for_room() -> None:
    channel: Channel[int] = Channel(1)
    await channel.send(1)
    sender = asyncio.create_task(channel.send(2))
    await asyncio.sleep(0.02)
    assert not sender.done()
    assert len(channel) == 1
    assert await channel.recv() == 1
    await asyncio.wait_for(sender, 5)
    assert await channel.recv() == 2


async def test_a_waiting_sender_fails_when_the_channel_closes() -> None:
    channel: Channel[int] = Channel(1)
    channel.send_nowait(1)
    sender = asyncio.create_task(channel.send(2))
    await asyncio.sleep(0.01)
    channel.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(sender, 5)
    assert await drain(channel) == [1]


async def test_recv_waits_for_a_value() -> None:
    channel: Channel[int] = Channel()
    receiver = asyncio.create_task(channel.recv())
    await asyncio.sleep(0.01)
    assert not receiver.done()
    channel.send_nowait(42)
    assert await asyncio.wait_for(receiver, 5) == 42


async def test_multiple_consumers_get_each_value_exactly_once() -> None:
    channel: Channel[int] = Channel(5)

    async def consume() -> list[int]:
        got = []
        async for value in channel:
            got.append(value)
            await asyncio.sleep(0)
        return got

    consumers = [asyncio.create_task(consume()) for _ in range(4)]
    for i in range(300):
        await channel.send(i)
    channel.close()
    results = await asyncio.wait_for(asyncio.gather(*consumers), 10)
    everything = Counter(v for got in results for v in got)
    assert everything == Counter(range(300))
    assert all(got == sorted(got) for got in results)  # each consumer sees FIFO order
    assert sum(1 for got in results if got) >= 2  # the work was actually shared


async def test_a_cancelled_receiver_loses_no_value() -> None:
    channel: Channel[int] = Channel()
    first = asyncio.create_task(channel.recv())
    second = asyncio.create_task(channel.recv())
    await asyncio.sleep(0.01)
    channel.send_nowait(1)  # wakes the first receiver...
    first.cancel()  # ...which is cancelled before it takes the value
    assert await asyncio.wait_for(second, 5) == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_a_cancelled_sender_passes_the_room_on() -> None:
    channel: Channel[int] = Channel(1)
    channel.send_nowait(0)
    first = asyncio.create_task(channel.send(1))
    second = asyncio.create_task(channel.send(2))
    await asyncio.sleep(0.01)
    assert await channel.recv() == 0  # room for one: wakes the first sender...
    first.cancel()  # ...which is cancelled before it sends
    await asyncio.wait_for(second, 5)
    channel.close()
    assert await drain(channel) == [2]


async def test_several_producers_keep_their_own_order() -> None:
    channel: Channel[tuple[int, int]] = Channel(3)

    async def produce(p: int) -> None:
        for i in range(50):
            await channel.send((p, i))

    producers = [asyncio.create_task(produce(p)) for p in range(3)]
    consumer = asyncio.create_task(drain(channel))
    await asyncio.gather(*producers)
    channel.close()
    got = await asyncio.wait_for(consumer, 5)
    assert len(got) == 150
    for p in range(3):
        assert [i for q, i in got if q == p] == list(range(50))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers()), st.integers(min_value=0, max_value=6))
def test_fifo_order_for_any_sequence_and_maxsize(values: list[int], maxsize: int) -> None:
    async def scenario() -> list[int]:
        channel: Channel[int] = Channel(maxsize)

        async def produce() -> None:
            for value in values:
                await channel.send(value)
            channel.close()

        producer = asyncio.create_task(produce())
        received = await drain(channel)
        await producer
        return received

    assert asyncio.run(scenario()) == values


def test_repr_shows_state() -> None:
    channel: Channel[int] = Channel(3)
    channel.send_nowait(1)
    assert "open" in repr(channel) and "buffered=1" in repr(channel)
    channel.close()
    assert "closed" in repr(channel)
