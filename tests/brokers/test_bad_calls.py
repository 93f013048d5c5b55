"""One table of bad calls, fed to every backend: each must refuse them the same way.

The checks live in the shared BrokerFront, so a backend cannot drift from the others;
these tests keep it so. After every refused call nothing has been stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from pywork import BrokerClosed, Job, JobState, SerializationError
from pywork.brokers import Broker, Delivery, Outcome

Call = Callable[[Broker], Awaitable[Any]]

_DELIVERY = Delivery("0" * 32, "token", 1, None)
NOW = datetime.now().astimezone()

#: (what, call, the exception every backend raises)
BAD_CALLS: list[tuple[str, Call, type[Exception]]] = [
    ("enqueue a str", lambda b: b.enqueue("email.send"), TypeError),  # type: ignore[arg-type]
    ("enqueue negative delay", lambda b: b.enqueue(Job("x"), delay=-1), ValueError),
    ("enqueue str delay", lambda b: b.enqueue(Job("x"), delay="soon"), TypeError),  # type: ignore[arg-type]
    ("enqueue nan delay", lambda b: b.enqueue(Job("x"), delay=float("nan")), ValueError),
    (
        "enqueue negative timedelta",
        lambda b: b.enqueue(Job("x"), delay=timedelta(seconds=-1)),
        ValueError,
    ),
    ("enqueue str at", lambda b: b.enqueue(Job("x"), at="tomorrow"), TypeError),  # type: ignore[arg-type]
    (
        "enqueue at and delay",
        lambda b: b.enqueue(Job("x"), at=datetime.now(), delay=1.0),
        ValueError,
    ),
    (
        "enqueue args that are not JSON",
        lambda b: b.enqueue(Job("x", {"when": datetime.now()})),
        SerializationError,
    ),
    ("enqueue_many one Job", lambda b: b.enqueue_many(Job("x")), TypeError),  # type: ignore[arg-type]
    ("enqueue_many a str", lambda b: b.enqueue_many("jobs"), TypeError),  # type: ignore[arg-type]
    (
        "enqueue_many the same id twice",
        lambda b: b.enqueue_many([Job("x", id="a" * 32), Job("y", id="a" * 32)]),
        ValueError,
    ),
    (
        "enqueue_many one bad job",
        lambda b: b.enqueue_many([Job("x"), Job("y", {"s": {1, 2}})]),
        SerializationError,
    ),
    ("get an int", lambda b: b.get(42), TypeError),  # type: ignore[arg-type]
    ("wait an int", lambda b: b.wait(42), TypeError),  # type: ignore[arg-type]
    ("wait a negative timeout", lambda b: b.wait("x", timeout=-1), ValueError),
    ("cancel None", lambda b: b.cancel(None), TypeError),  # type: ignore[arg-type]
    ("retry_dead bytes", lambda b: b.retry_dead(b"id"), TypeError),  # type: ignore[arg-type]
    ("dead_letters limit 0", lambda b: b.dead_letters(limit=0), ValueError),
    ("dead_letters limit 1001", lambda b: b.dead_letters(limit=1001), ValueError),
    ("dead_letters limit str", lambda b: b.dead_letters(limit="5"), TypeError),  # type: ignore[arg-type]
    ("dead_letters empty queue", lambda b: b.dead_letters(""), ValueError),
    ("dead_letters int queue", lambda b: b.dead_letters(5), TypeError),  # type: ignore[arg-type]
    ("purge_dead empty queue", lambda b: b.purge_dead(""), ValueError),
    ("purge_dead int queue", lambda b: b.purge_dead(5), TypeError),  # type: ignore[arg-type]
    ("claim a str of queues", lambda b: b.claim("default", 1, lease=30, max_retries=3), TypeError),
    ("claim no queues", lambda b: b.claim([], 1, lease=30, max_retries=3), ValueError),
    ("claim an empty name", lambda b: b.claim([""], 1, lease=30, max_retries=3), ValueError),
    ("claim limit -1", lambda b: b.claim(["q"], -1, lease=30, max_retries=3), ValueError),
    ("claim lease 0", lambda b: b.claim(["q"], 1, lease=0, max_retries=3), ValueError),
    ("claim max_retries -1", lambda b: b.claim(["q"], 1, lease=30, max_retries=-1), ValueError),
    ("wait_for_work a str", lambda b: b.wait_for_work("q", 1.0), TypeError),
    ("wait_for_work negative", lambda b: b.wait_for_work(["q"], -1.0), ValueError),
    ("renew lease 0", lambda b: b.renew([_DELIVERY], lease=0), ValueError),
    (
        "settle as running",
        lambda b: b.settle([Outcome(_DELIVERY, JobState.RUNNING)]),
        ValueError,
    ),
    (
        "settle negative retry_in",
        lambda b: b.settle([Outcome(_DELIVERY, JobState.FAILED, retry_in=-1.0)]),
        ValueError,
    ),
    ("schedule an empty name", lambda b: b.schedule("", Job("x"), every=60), ValueError),
    ("schedule a str job", lambda b: b.schedule("n", "x", every=60), TypeError),  # type: ignore[arg-type]
    ("schedule no timing", lambda b: b.schedule("n", Job("x")), ValueError),
    ("schedule every 0", lambda b: b.schedule("n", Job("x"), every=0), ValueError),
    ("schedule a bad cron", lambda b: b.schedule("n", Job("x"), cron="61 * * * *"), ValueError),
    ("unschedule an int", lambda b: b.unschedule(3), TypeError),  # type: ignore[arg-type]
    ("due_schedules a str", lambda b: b.due_schedules("now"), TypeError),  # type: ignore[arg-type]
    ("due_schedules naive", lambda b: b.due_schedules(datetime.now()), ValueError),
    (
        "fire a bare Job",
        lambda b: b.fire("n", NOW, NOW, NOW, [Job("x")]),  # type: ignore[list-item]
        TypeError,
    ),
]


@pytest.mark.parametrize(
    ("call", "error"),
    [(call, error) for _, call, error in BAD_CALLS],
    ids=[w for w, *_ in BAD_CALLS],
)
async def test_every_backend_refuses_a_bad_call_alike(
    broker: Broker, call: Call, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await call(broker)
    assert await broker.stats() == {}
    assert await broker.schedules() == []


async def test_a_stored_id_is_refused_and_nothing_of_the_batch_is_stored(broker: Broker) -> None:
    job = Job("x")
    await broker.enqueue(job)
    with pytest.raises(ValueError, match="already stored"):
        await broker.enqueue(Job("x", id=job.id))
    with pytest.raises(ValueError, match="already stored"):
        await broker.enqueue_many([Job("y"), Job("x", id=job.id)])
    assert (await broker.stats())["default"].queued == 1


async def test_unknown_ids_are_answered_alike(broker: Broker) -> None:
    unknown = "f" * 32
    assert await broker.get(unknown) is None
    assert await broker.cancel(unknown) is False
    assert await broker.retry_dead(unknown) is False
    assert await broker.unschedule("nosuch") is False
    assert await broker.renew([_DELIVERY], lease=30.0) == {_DELIVERY.id: "lost"}
    assert await broker.settle([Outcome(_DELIVERY, JobState.SUCCEEDED)]) == [False]


async def test_a_closed_broker_refuses_every_call(broker: Broker) -> None:
    job_id = await broker.enqueue(Job("x"))
    await broker.close()
    await broker.close()  # idempotent
    calls: list[Call] = [
        lambda b: b.enqueue(Job("x")),
        lambda b: b.enqueue_many([Job("x")]),
        lambda b: b.enqueue_many([]),
        lambda b: b.get(job_id),
        lambda b: b.wait(job_id, timeout=1),
        lambda b: b.cancel(job_id),
        lambda b: b.stats(),
        lambda b: b.dead_letters(),
        lambda b: b.retry_dead(job_id),
        lambda b: b.purge_dead(),
        lambda b: b.claim(["default"], 1, lease=30.0, max_retries=3),
        lambda b: b.wait_for_work(["default"], 0.01),
        lambda b: b.renew([], lease=30.0),
        lambda b: b.settle([]),
        lambda b: b.schedule("n", Job("x"), every=60),
        lambda b: b.unschedule("n"),
        lambda b: b.schedules(),
        lambda b: b.due_schedules(datetime.now().astimezone()),
    ]
    for call in calls:
        with pytest.raises(BrokerClosed, match="closed"):
            await call(broker)


async def test_connection_is_refused_unless_it_is_an_asyncpg_connection(broker: Broker) -> None:
    # only PostgreSQL takes connection= (tests/brokers/test_postgres.py), and only asyncpg's
    with pytest.raises(TypeError, match="connection"):
        await broker.enqueue(Job("x"), connection=object())
    with pytest.raises(TypeError, match="connection"):
        await broker.enqueue_many([Job("x")], connection=object())
    assert await broker.stats() == {}
