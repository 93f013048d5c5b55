"""connect_sync: every broker call blocking, with the async broker's results and errors."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime

import pytest

import pywork
from pywork import BrokerClosed, Job, JobState, SerializationError


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pywork-sync-broker"]


def test_blocking_calls_give_the_async_results_and_errors(broker_url: str) -> None:
    with pywork.connect_sync(broker_url) as broker:
        job_id = broker.enqueue(Job("email.send", {"to": "a@b.c"}, queue="mail"))
        record = broker.get(job_id)
        assert record is not None
        assert (record.handler, record.args, record.state) == (
            "email.send", {"to": "a@b.c"}, JobState.QUEUED,
        )  # fmt: skip
        later = broker.enqueue(Job("email.send"), delay=60)
        assert broker.get(later).state is JobState.SCHEDULED  # type: ignore[union-attr]
        assert len(broker.enqueue_many([Job("a"), Job("b")])) == 2
        assert broker.stats()["mail"].queued == 1
        assert broker.cancel(job_id) is True
        assert broker.cancel(job_id) is False
        assert broker.dead_letters() == []
        assert broker.retry_dead(job_id) is False
        assert broker.purge_dead() == 0
        declared = broker.schedule("nightly", Job("report"), cron="0 3 * * *")
        assert [s.name for s in broker.schedules()] == ["nightly"] == [declared.name]
        assert broker.unschedule("nightly") is True
        with pytest.raises(SerializationError, match=r"args\['at'\]"):
            broker.enqueue(Job("x", {"at": datetime.now()}))
        with pytest.raises(TypeError, match=r"pywork\.Job"):
            broker.enqueue("x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit"):
            broker.dead_letters(limit=0)
    with pytest.raises(BrokerClosed):
        broker.stats()
    broker.close()  # idempotent
    assert _loop_threads() == []


def test_sixteen_threads_enqueue_at_once(broker_url: str) -> None:
    broker = pywork.connect_sync(broker_url)
    start = threading.Barrier(16)
    ids: list[list[str]] = [[] for _ in range(16)]
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            start.wait(timeout=10)
            for i in range(25):
                ids[n].append(broker.enqueue(Job("work", {"thread": n, "i": i})))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert errors == []
        every = [job_id for per_thread in ids for job_id in per_thread]
        assert len(every) == len(set(every)) == 400
        assert broker.stats()["default"].queued == 400
    finally:
        broker.close()


def test_a_bad_url_raises_at_once_and_leaves_no_thread() -> None:
    with pytest.raises(ValueError, match="supported schemes"):
        pywork.connect_sync("nosuch://x")
    with pytest.raises(ValueError, match="retention"):
        pywork.connect_sync("memory://", retention=-1)
    assert _loop_threads() == []


async def test_a_call_from_its_own_loop_thread_is_refused() -> None:
    broker = pywork.connect_sync("memory://")
    try:
        refused: list[BaseException] = []

        async def inside() -> None:
            try:
                broker.stats()
            except RuntimeError as exc:
                refused.append(exc)

        asyncio.run_coroutine_threadsafe(inside(), broker._loop).result(timeout=10)
        assert "deadlock" in str(refused[0])
    finally:
        broker.close()
