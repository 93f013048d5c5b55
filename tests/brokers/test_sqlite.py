"""What only the SQLite broker does: its file, its errors, its SQL as named queries.

The behaviour every broker shares is in test_contract.py (which runs against SQLite too).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest

import pywork
from pywork import BrokerError, BrokerUnavailable, Job, JobState, Status
from pywork.brokers import Broker
from pywork.brokers.base import LEASE_EXPIRED
from pywork.brokers.queries import load_queries, read_resource
from pywork.brokers.sqlite import POLL_INTERVAL, SQLiteBroker


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
