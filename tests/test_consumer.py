"""The consumer's own behaviour: what it logs, and leases kept while the event loop is blocked."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping, Sequence

import pytest

from pywork import BadRequest, BrokerUnavailable, Job, JobState, Worker
from pywork.brokers import Delivery
from pywork.brokers.memory import MemoryBroker
from tests.brokers.support import claim_one, consuming, record_in


def warnings_about(caplog: pytest.LogCaptureFixture, job_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and job_id in r.getMessage()]


async def test_failures_log_one_warning_each_and_successes_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pywork")
    # Given handlers that time out, reject their input, fail, and succeed
    broker = MemoryBroker()
    worker = Worker()

    @worker.handler("slow", timeout=0.05, max_retries=0)
    async def slow(job: Job) -> None:
        await asyncio.sleep(5)

    @worker.handler("reject")
    async def reject(job: Job) -> None:
        raise BadRequest("no such user")

    @worker.handler("flaky", max_retries=1)
    async def flaky(job: Job) -> None:
        raise RuntimeError("boom")

    @worker.handler("ok")
    async def ok(job: Job) -> None:
        pass

    ids = {name: await broker.enqueue(Job(name)) for name in ("slow", "reject", "flaky", "ok")}
    # When they are consumed to their end
    async with consuming(worker, broker, backoff=(0.2, 0.2)):
        for job_id in ids.values():
            await record_in(broker, job_id)

    # Then each failure is ONE warning naming handler, job id, attempt and status
    slow_lines = [r.getMessage() for r in warnings_about(caplog, ids["slow"])]
    assert len(slow_lines) == 1, slow_lines
    assert "slow" in slow_lines[0] and "attempt 1" in slow_lines[0]
    assert "408" in slow_lines[0] and "dead" in slow_lines[0]

    reject_lines = [r.getMessage() for r in warnings_about(caplog, ids["reject"])]
    assert len(reject_lines) == 1, reject_lines
    assert "reject" in reject_lines[0] and "400" in reject_lines[0] and "dead" in reject_lines[0]
    assert "no such user" in reject_lines[0]

    flaky_records = warnings_about(caplog, ids["flaky"])
    flaky_lines = [r.getMessage() for r in flaky_records]
    assert len(flaky_lines) == 2, flaky_lines  # the retry, then dead after its last retry
    retry, dead = flaky_lines
    assert "flaky" in retry and "attempt 1" in retry and "500" in retry
    assert re.search(r"retry in \d+\.\d+s at \d{4}-\d\d-\d\dT", retry), retry
    assert "attempt 2" in dead and "500" in dead and "dead after its last retry" in dead
    assert flaky_records[0].__dict__["attempt"] == 1 and flaky_records[0].__dict__["status"] == 500
    assert flaky_records[0].__dict__["retry_at"]  # for the JSON log lines

    ok_records = [r for r in caplog.records if ids["ok"] in r.getMessage()]
    assert ok_records and all(r.levelno == logging.DEBUG for r in ok_records)
    assert any("200" in r.getMessage() and "ok" in r.getMessage() for r in ok_records)


class FlakyRenewals(MemoryBroker):
    """A memory broker whose renewals fail while `down` is set (a broker outage)."""

    down = False

    async def _renew(
        self, deliveries: Sequence[Delivery], lease: float, progress: Mapping[str, bytes]
    ) -> dict[str, str]:
        if self.down:
            raise ConnectionError("renewals are down")
        return await super()._renew(deliveries, lease, progress)

    def _map_error(self, exc: Exception) -> BrokerUnavailable | None:
        return BrokerUnavailable(str(exc)) if isinstance(exc, ConnectionError) else None


async def test_a_lost_lease_logs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pywork")
    # Given a running job whose renewals fail until its lease lapses and another takes it
    broker = FlakyRenewals(f"lost{uuid.uuid4().hex}")
    worker = Worker()
    release = asyncio.Event()

    @worker.handler("hold")
    async def hold(job: Job) -> None:
        await release.wait()

    job_id = await broker.enqueue(Job("hold"))
    waiting = await broker.enqueue(Job("hold"))  # held too: the consumer claims no more
    async with consuming(worker, broker, lease=0.3, concurrency=1):
        await record_in(broker, job_id, (JobState.RUNNING,))
        await record_in(broker, waiting, (JobState.RUNNING,))
        broker.down = True
        await asyncio.sleep(0.5)
        thief = await claim_one(broker, lease=30.0)  # another consumer takes it back
        assert thief.id == job_id
        broker.down = False
        # When the consumer renews again, then the run ends
        await asyncio.sleep(0.5)
        release.set()
        await record_in(broker, waiting)

    # Then exactly one warning says the lease was lost, naming handler, job and attempt
    lost = [r.getMessage() for r in warnings_about(caplog, job_id)]
    assert len(lost) == 1 and "lease lost" in lost[0], lost
    assert "hold" in lost[0] and "attempt 1" in lost[0]
    record = await broker.get(job_id)
    assert record is not None and record.state is JobState.RUNNING  # the thief holds it


async def test_a_blocked_event_loop_keeps_its_leases_and_the_watchdog_says_where(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pywork")
    # Given an async handler that blocks its event loop for longer than its lease
    name = f"blocked{uuid.uuid4().hex}"
    broker = MemoryBroker(name)
    worker = Worker()
    runs = 0

    @worker.handler("blocker")
    async def blocker(job: Job) -> None:
        nonlocal runs
        runs += 1
        time.sleep(2.5)  # noqa: ASYNC251 (the point of the test)

    # And another consumer (a thread with its own loop) that takes the job if its lease lapses
    job_id = await broker.enqueue(Job("blocker"))
    stolen: list[str] = []
    stop = threading.Event()

    def other_consumer() -> None:
        async def main() -> None:
            other = MemoryBroker(name)
            while not stop.is_set():
                record = await other.get(job_id)
                if record is not None and record.state is JobState.RUNNING:
                    break
                await asyncio.sleep(0.005)
            while not stop.is_set():
                for delivery in await other.claim(["default"], 1, lease=30.0, max_retries=3):
                    stolen.append(delivery.id)
                await asyncio.sleep(0.02)

        asyncio.run(main())

    thread = threading.Thread(target=other_consumer)
    thread.start()
    try:
        # When it runs with a lease shorter than the block
        async with consuming(worker, broker, lease=1.0):
            record = await record_in(broker, job_id, timeout=10)
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 10)

    # Then the job ran once and succeeded: nobody else took it
    assert stolen == [] and runs == 1
    assert record.state is JobState.SUCCEEDED and record.attempts == 1
    # And the watchdog said which handler blocked the loop, and where
    stuck = [r.getMessage() for r in caplog.records if "event loop" in r.getMessage()]
    warned = [m for m in stuck if "blocker" in m and job_id in m]
    assert warned, stuck
    assert "time.sleep(2.5)" in warned[0] or "in blocker" in warned[0], warned[0]
    assert not [r for r in warnings_about(caplog, job_id) if "lease lost" in r.getMessage()]


async def test_memory_twin_shares_the_store() -> None:
    broker = MemoryBroker()
    job_id = await broker.enqueue(Job("x"))
    twin = await broker.twin()
    record = await twin.get(job_id)
    assert record is not None and record.id == job_id
