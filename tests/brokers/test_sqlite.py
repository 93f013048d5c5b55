"""What only the SQLite broker does: its file, its errors, its SQL as named queries.

The behaviour every broker shares is in test_contract.py (which runs against SQLite too).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import pytest

import pywork
import pywork.brokers.sqlite as sqlite_module
from pywork import BrokerError, BrokerUnavailable, Job, JobRecord, JobState, Progress, Status
from pywork.brokers import Broker, Delivery, Outcome
from pywork.brokers.base import LEASE_EXPIRED
from pywork.brokers.queries import load_queries, read_resource
from pywork.brokers.sqlite import POLL_INTERVAL, SQLiteBroker
from pywork.encoding import encode_job


def _static_check(broker: SQLiteBroker) -> Broker:
    return broker  # mypy: SQLiteBroker implements the Broker protocol


# ---------------------------------------------------------------------------------------
# errors (contract §16)
# ---------------------------------------------------------------------------------------
async def test_a_file_in_a_missing_directory_is_unavailable_naming_the_path(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing" / "jobs.db"
    with pytest.raises(BrokerUnavailable, match=re.escape(str(path))) as caught:
        await pywork.connect(f"sqlite:///{path}")
    assert isinstance(caught.value, ConnectionError)
    assert not path.parent.exists()


async def test_a_directory_is_unavailable_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailable, match=re.escape(str(tmp_path))):
        await pywork.connect(f"sqlite:///{tmp_path}")


async def test_a_readonly_database_error_maps_to_unavailable(tmp_path: Path) -> None:
    # Given the driver's error for a write to a database opened read-only
    path = tmp_path / "jobs.db"
    async with pywork.connect(f"sqlite:///{path}") as broker:
        assert isinstance(broker, SQLiteBroker)
        readonly = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            with pytest.raises(sqlite3.OperationalError) as caught:
                readonly.execute("DELETE FROM pywork_jobs")
        finally:
            readonly.close()
        # Then the broker's one mapping calls the file unavailable, naming it
        mapped = broker._map_error(caught.value)
        assert isinstance(mapped, BrokerUnavailable) and str(path) in str(mapped)
        # and lets errors that are not the driver's through
        assert broker._map_error(ValueError("duplicate")) is None


async def test_other_driver_errors_are_broker_errors(tmp_path: Path) -> None:
    # Given a broker whose table another connection dropped
    path = tmp_path / "jobs.db"
    async with pywork.connect(f"sqlite:///{path}") as broker:
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE pywork_jobs")
        db.close()
        # Then a call fails with BrokerError (not BrokerUnavailable), the driver's text kept
        with pytest.raises(BrokerError, match="no such table") as caught:
            await broker.get("x")
        assert not isinstance(caught.value, BrokerUnavailable)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_a_duplicate_id_is_still_a_value_error(tmp_path: Path) -> None:
    async with pywork.connect(f"sqlite:///{tmp_path / 'jobs.db'}") as broker:
        await broker.enqueue(Job("x", id="same"))
        with pytest.raises(ValueError, match="already stored"):
            await broker.enqueue(Job("x", id="same"))


# ---------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------
async def test_the_lease_expired_error_is_built_from_lease_expired(tmp_path: Path) -> None:
    async with pywork.connect(f"sqlite:///{tmp_path / 'jobs.db'}") as broker:
        job_id = await broker.enqueue(Job("x"))
        assert len(await broker.claim(["default"], 1, lease=0.05, max_retries=0)) == 1
        await asyncio.sleep(0.1)
        # When the next claim takes the expired lease back, past max_retries
        assert await broker.claim(["default"], 1, lease=5.0, max_retries=0) == []
        record = await broker.get(job_id)
        assert record is not None and record.state is JobState.DEAD
        assert record.status is Status.TIMEOUT
        assert record.error == f"{LEASE_EXPIRED[0]}1{LEASE_EXPIRED[1]}"


def test_every_named_query_is_used_and_no_sql_is_inline() -> None:
    queries = load_queries("pywork.brokers.sqlite", "queries.sql")
    source = read_resource("pywork.brokers.sqlite", "__init__.py")
    used = set(re.findall(r"""_Q\[["'](\w+)["']\]""", source))
    unused = [name for name in queries if name not in used]
    assert unused == []
    # the only statements left in Python are the connection's PRAGMAs and transactions
    inline = re.findall(r'"(?:SELECT|INSERT|UPDATE|DELETE|CREATE)\b', source)
    assert inline == []


def test_poll_interval_is_importable() -> None:
    assert 0 < POLL_INTERVAL <= 1


# ---------------------------------------------------------------------------------------
# results, progress and wait (contract §10)
# ---------------------------------------------------------------------------------------
#: pywork_jobs as files created before results and progress have it
_OLD_JOBS_TABLE = """
CREATE TABLE pywork_jobs (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, queue TEXT NOT NULL,
    handler TEXT NOT NULL, payload BLOB NOT NULL, key TEXT, max_retries INTEGER,
    state TEXT NOT NULL, status INTEGER, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
    token TEXT, enqueued_at REAL NOT NULL, started_at REAL, finished_at REAL, run_at REAL
)
"""


def _columns(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [row[1] for row in db.execute("PRAGMA table_info(pywork_jobs)")]


async def test_a_file_of_the_previous_schema_gains_the_result_and_progress_columns(
    tmp_path: Path,
) -> None:
    # Given a file written before results, holding a queued job
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(_OLD_JOBS_TABLE)
        db.execute(
            "INSERT INTO pywork_jobs (id, queue, handler, payload, state, enqueued_at) "
            "VALUES ('old', 'default', 'x', ?, 'queued', ?)",
            (encode_job(Job("x", id="old")), time.time()),
        )
    # When a broker opens it (twice: the second open adds nothing)
    async with pywork.connect(f"sqlite:///{path}") as broker:
        pass
    async with pywork.connect(f"sqlite:///{path}") as broker:
        # Then the columns are there and the old job runs to a stored result
        assert _columns(path)[-2:] == ["result", "progress"]
        before = await broker.get("old")
        assert before is not None and (before.result, before.progress) == (None, None)
        [delivery] = await broker.claim(["default"], 1, lease=30, max_retries=0)
        report = Progress(2, 2, "done", datetime.now(UTC))
        assert await broker.renew([delivery], lease=30, progress={"old": report}) == {}
        outcome = Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS, result=b'{"n": 1}')
        assert await broker.settle([outcome]) == [True]
        record = await broker.wait("old", timeout=5)
    assert record.result == {"n": 1}
    assert record.progress is not None and record.progress.message == "done"


async def test_progress_is_stored_by_the_renewals_own_update_and_only_with_the_lease(
    tmp_path: Path,
) -> None:
    async with pywork.connect(f"sqlite:///{tmp_path / 'jobs.db'}") as broker:
        assert isinstance(broker, SQLiteBroker)
        held_id = await broker.enqueue(Job("x"))
        lost_id = await broker.enqueue(Job("x"))
        held, lost = await broker.claim(["default"], 2, lease=30, max_retries=0)
        stale = Delivery(lost.id, "not-the-token", lost.attempt, lost.job)
        statements: list[str] = []
        db = broker._db
        assert db is not None
        await broker._call(db.set_trace_callback, statements.append)
        report = Progress(1, None, None, datetime.now(UTC))
        reports = {held_id: report, lost_id: report}
        assert await broker.renew([held, stale], lease=30, progress=reports) == {lost_id: "lost"}
        await broker._call(db.set_trace_callback, None)
        updates = [s for s in statements if s.lstrip().startswith("UPDATE")]
        assert len(updates) == 2 and all("progress" in s for s in updates)  # one per renewal
        stored, other = await broker.get(held_id), await broker.get(lost_id)
        assert stored is not None and stored.progress is not None
        assert stored.progress.current == 1
        assert other is not None and other.progress is None


async def _woken_after(waiting: asyncio.Task[JobRecord], finish: Awaitable[object]) -> float:
    """Seconds from `finish` starting to `waiting` returning (waiting already waits)."""
    await asyncio.sleep(0.1)
    assert not waiting.done()
    start = time.monotonic()
    await finish
    await waiting
    return time.monotonic() - start


@pytest.mark.parametrize("how", ["succeeded", "dead", "cancelled", "lease expired"])
async def test_wait_is_woken_at_once_by_a_finish_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    # Given a waiter and a consumer on one file (two brokers), and no poll to fall back on
    # (without the wake-up the front looks again only after its 1 s slice)
    monkeypatch.setattr(sqlite_module, "POLL_INTERVAL", 30.0)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with pywork.connect(url) as producer, pywork.connect(url) as consumer:
        job_id = await producer.enqueue(Job("x", max_retries=0))
        [delivery] = await consumer.claim(["default"], 1, lease=0.2, max_retries=0)
        waiting = asyncio.create_task(producer.wait(job_id, timeout=10))
        finish: Awaitable[object]
        if how == "succeeded":
            finish = consumer.settle([Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS)])
        elif how == "dead":
            finish = consumer.settle([Outcome(delivery, JobState.DEAD, Status.BAD_REQUEST)])
        elif how == "cancelled":
            finish = consumer.cancel(job_id)
        else:
            await asyncio.sleep(0.2)
            finish = consumer.claim(["default"], 1, lease=30, max_retries=0)
        # Then the waiter returns well before any poll
        assert await _woken_after(waiting, finish) < 0.5
        final = {"succeeded": JobState.SUCCEEDED, "cancelled": JobState.CANCELLED}
        assert waiting.result().state is final.get(how, JobState.DEAD)


async def test_wait_sees_a_finish_by_another_process_within_the_poll_interval(
    tmp_path: Path,
) -> None:
    # Given a consumer whose process-wide waiters are not the waiter's (another process)
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    async with pywork.connect(url) as producer, pywork.connect(url) as consumer:
        assert isinstance(consumer, SQLiteBroker)
        consumer._waiters = sqlite_module._Waiters()
        job_id = await producer.enqueue(Job("x"))
        [delivery] = await consumer.claim(["default"], 1, lease=30, max_retries=0)
        waiting = asyncio.create_task(producer.wait(job_id, timeout=10))
        finish = consumer.settle([Outcome(delivery, JobState.SUCCEEDED, Status.SUCCESS)])
        assert await _woken_after(waiting, finish) < POLL_INTERVAL + 0.5


async def test_a_new_database_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    broker = await pywork.connect(f"sqlite:///{path}")
    try:
        await broker.enqueue(Job("x"))
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        await broker.close()
