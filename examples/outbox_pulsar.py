"""An outbox published to Pulsar, and a second worker consuming the topic.

go-work's own example, in Python. The application writes orders to an ``outbox`` table
(SQLite, or PostgreSQL with ``--database postgresql://...``). A ConcurrentJob of pollers
runs ``outbox.publish`` over and over (``PerformWith.SYNC``): each run claims the next
unpublished row, publishes it to a Pulsar topic and marks it published, or raises
``NoResponse`` (444) when there is nothing to publish. A second worker consumes the
topic with ``PulsarSource`` and ``Worker.consume_source``, once per order.

A claim is one atomic ``UPDATE ... RETURNING`` with an expiry, so pollers never publish
the same row twice while they live; a poller that dies after publishing and before
marking leaves a row that is published again after the claim expires (at-least-once:
consumers deduplicate by the order id, as here).

Run it with ``python examples/outbox_pulsar.py --service-url pulsar://127.0.0.1:6650
[--database outbox.db | postgresql://...] [--orders 50] [--pollers 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pulsar.asyncio

from pywork import ConcurrentJob, Job, NoResponse, PerformWith, Status, Unavailable, Worker
from pywork.sources import PulsarSource

CLAIM_SECONDS = 30.0

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    payload TEXT NOT NULL,
    claimed_until REAL,
    published_at REAL
)"""
POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id BIGSERIAL PRIMARY KEY,
    payload TEXT NOT NULL,
    claimed_until DOUBLE PRECISION,
    published_at DOUBLE PRECISION
)"""
CLAIM = """
UPDATE outbox SET claimed_until = {now} + {claim}
WHERE id = (
    SELECT id FROM outbox
    WHERE published_at IS NULL AND (claimed_until IS NULL OR claimed_until < {now})
    ORDER BY id LIMIT 1 {lock}
)
RETURNING id, payload"""


class Outbox:
    """The outbox table, in SQLite (a file) or PostgreSQL (a URL)."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.postgres = database.startswith(("postgresql://", "postgres://"))
        self.pool: Any = None

    async def open(self) -> None:
        if self.postgres:
            import asyncpg

            self.pool = await asyncpg.create_pool(self.database, min_size=1, max_size=4)
            await self.pool.execute(POSTGRES_SCHEMA)
        else:
            await asyncio.to_thread(self._sqlite, SQLITE_SCHEMA, ())

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def _sqlite(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.database, timeout=10, isolation_level=None) as db:
            return db.execute(sql, params).fetchall()

    async def add(self, payload: dict[str, Any]) -> None:
        """Write an order to the outbox (the application's side)."""
        text = json.dumps(payload)
        if self.postgres:
            await self.pool.execute("INSERT INTO outbox (payload) VALUES ($1)", text)
        else:
            await asyncio.to_thread(
                self._sqlite, "INSERT INTO outbox (payload) VALUES (?)", (text,)
            )

    async def claim(self) -> tuple[int, str] | None:
        """Claim the oldest unpublished row for CLAIM_SECONDS: (id, payload) or None."""
        now = time.time()
        if self.postgres:
            sql = CLAIM.format(now="$1", claim="$2", lock="FOR UPDATE SKIP LOCKED")
            row = await self.pool.fetchrow(sql, now, CLAIM_SECONDS)
            return None if row is None else (row["id"], row["payload"])
        sql = CLAIM.format(now="?1", claim="?2", lock="")
        rows = await asyncio.to_thread(self._sqlite, sql, (now, CLAIM_SECONDS))
        return (rows[0][0], rows[0][1]) if rows else None

    async def mark(self, row_id: int, *, published: bool) -> None:
        """Mark a claimed row published, or release its claim."""
        if published:
            sql, params = "UPDATE outbox SET published_at = {} WHERE id = {}", (time.time(), row_id)
        else:
            sql, params = "UPDATE outbox SET claimed_until = NULL WHERE id = {}", (row_id,)
        if self.postgres:
            await self.pool.execute(sql.format(*(f"${i + 1}" for i in range(len(params)))), *params)
        else:
            await asyncio.to_thread(self._sqlite, sql.format(*("?" * len(params))), params)

    async def unpublished(self) -> int:
        sql = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
        if self.postgres:
            return int(await self.pool.fetchval(sql))
        return int((await asyncio.to_thread(self._sqlite, sql, ()))[0][0])


async def publish_next(job: Job) -> None:
    """Publish the next outbox row to Pulsar, or raise NoResponse when there is none."""
    assert job.ctx is not None and job.ctx.worker is not None
    outbox: Outbox = job.ctx.worker.session["outbox"]
    producer = job.ctx.worker.session["producer"]
    claimed = await outbox.claim()
    if claimed is None:
        raise NoResponse("nothing to publish")
    row_id, payload = claimed
    try:
        await producer.send(payload.encode(), properties={"outbox-id": str(row_id)})
    except Exception as exc:
        await outbox.mark(row_id, published=False)
        raise Unavailable(f"publishing row {row_id} failed: {exc}") from exc
    await outbox.mark(row_id, published=True)


async def run(service_url: str, database: str, orders: int, pollers: int) -> dict[str, Any]:
    """Write `orders` orders, publish them with `pollers`, consume them; return counts."""
    topic = f"persistent://public/default/orders-{uuid.uuid4().hex[:8]}"
    outbox = Outbox(database)
    await outbox.open()
    client = pulsar.asyncio.Client(service_url, logger=logging.getLogger("pulsar"))
    producer = await client.create_producer(topic)
    polls: Counter[Status] = Counter()
    polled_empty = asyncio.Event()

    def count(inner: Any) -> Any:
        async def counted(job: Job) -> None:
            await inner(job)
            assert job.ctx is not None
            polls[job.ctx.status] += 1
            if job.ctx.status is Status.NO_RESPONSE:
                polled_empty.set()

        return counted

    publishers = ConcurrentJob(
        Job("outbox.publish"),
        worker_factory=lambda: Worker(
            middleware=[count], session={"outbox": outbox, "producer": producer}
        ),
        perform_with=PerformWith.SYNC,
        max_workers=pollers,
        start_interval=0.01,
    )
    publishers.register("outbox.publish", publish_next)

    received: Counter[int] = Counter()
    all_received = asyncio.Event()
    consumer = Worker(name="orders")

    @consumer.handler("order.handle")
    async def handle(job: Job) -> None:
        received[job.args["received_data"]["order"]] += 1
        if len(received) == orders:
            all_received.set()

    source = PulsarSource(service_url, topic, "order-handlers")
    consuming = asyncio.create_task(consumer.consume_source(source, Job("order.handle")))
    try:
        async with publishers:
            await asyncio.wait_for(polled_empty.wait(), timeout=10)  # pollers run idle first
            for number in range(1, orders + 1):  # the application writes orders in bursts
                await outbox.add({"order": number, "item": f"book-{number}"})
                if number % 10 == 0:
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(all_received.wait(), timeout=30)
        left = await outbox.unpublished()
    finally:
        await consumer.stop()
        await consuming
        await source.close()
        await producer.close()
        await client.close()
        await outbox.close()
    return {"received": received, "polls": polls, "unpublished": left}


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the outbox, print what happened; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service-url", required=True, help="pulsar://host:port")
    parser.add_argument("--database", default=None, help="SQLite file or postgresql:// URL")
    parser.add_argument("--orders", type=int, default=50, help="orders to write (50)")
    parser.add_argument("--pollers", type=int, default=3, help="concurrent pollers (3)")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.pollers < 1:
        parser.error("--orders and --pollers must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        database = args.database or str(Path(tmp) / "outbox.db")
        result = asyncio.run(run(args.service_url, database, args.orders, args.pollers))
    received: Counter[int] = result["received"]
    polls: Counter[Status] = result["polls"]
    print(f"published {polls[Status.SUCCESS]} orders in {sum(polls.values())} polls")
    print(f"idle polls (444 NO_RESPONSE): {polls[Status.NO_RESPONSE]}")
    print(f"consumed {len(received)} orders, each once: {set(received.values()) == {1}}")
    print(f"left in the outbox: {result['unpublished']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
