"""An outbox publisher: workers poll an outbox and publish what they find, in batches.

The transactional-outbox pattern: the application writes messages to an outbox (here an
in-memory list filled by a producer task, in real life a database table) and a poller
publishes them to a broker. Each poll is one run of the ``outbox.publish`` job under a
ConcurrentJob in ``PerformWith.SYNC`` mode: a worker polls, waits ``start_interval``,
polls again. A poll that finds nothing raises ``NoResponse`` (status 444, "nothing to
do"), so metrics tell idle polls from real work; a failed publish raises ``Unavailable``
(503) and puts its batch back, so no message is lost.

Run it with ``python examples/outbox.py [--seconds 3] [--pollers 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from pywork import (
    Adapter,
    ConcurrentJob,
    Handler,
    Job,
    NoResponse,
    PerformWith,
    Status,
    Unavailable,
    Worker,
)


@dataclass
class Outbox:
    """An in-memory outbox: pending messages and those published so far."""

    pending: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    produced: int = 0
    empty: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, message: str) -> None:
        """Write a message to the outbox (the application's side)."""
        self.pending.append(message)
        self.produced += 1
        self.empty.clear()

    def take(self, limit: int) -> list[str]:
        """Remove and return up to `limit` of the oldest pending messages."""
        batch, self.pending[:limit] = self.pending[:limit], []
        return batch

    def put_back(self, batch: list[str]) -> None:
        """Return a batch that could not be published, ahead of newer messages."""
        self.pending[:0] = batch

    def mark_published(self, batch: list[str]) -> None:
        """Record a batch as published; set :attr:`empty` once nothing is left to do."""
        self.published.extend(batch)
        if not self.pending and len(self.published) >= self.produced:
            self.empty.set()


async def publish_batch(job: Job) -> None:
    """Poll the outbox once: publish up to ``batch_size`` messages, or raise NoResponse."""
    assert job.ctx is not None and job.ctx.worker is not None
    session = job.ctx.worker.session
    outbox: Outbox = session["outbox"]
    rng: random.Random = session["rng"]
    batch = outbox.take(job.args["batch_size"])
    if not batch:
        raise NoResponse("the outbox is empty")
    await asyncio.sleep(0.001 * len(batch))  # the round trip to the message broker
    if rng.random() < job.args["failure_rate"]:
        outbox.put_back(batch)
        raise Unavailable(f"broker unavailable, {len(batch)} messages put back")
    outbox.mark_published(batch)
    job.ctx["published"] = len(batch)


def count_statuses(polls: Counter[Status]) -> Adapter:
    """An adapter counting the final status of every poll in `polls`."""

    def adapter(inner: Handler) -> Handler:
        async def handler(job: Job) -> None:
            try:
                await inner(job)
            finally:
                assert job.ctx is not None
                polls[job.ctx.status] += 1

        return handler

    return adapter


async def produce(outbox: Outbox, seconds: float, rng: random.Random) -> None:
    """Write bursts of messages with quiet gaps, for `seconds`."""
    deadline = time.monotonic() + seconds
    number = 0
    while time.monotonic() < deadline:
        for _ in range(rng.randint(1, 40)):
            number += 1
            outbox.add(f"order-{number}")
        await asyncio.sleep(rng.uniform(0.05, 0.4))


async def run(
    seconds: float, pollers: int, batch_size: int, failure_rate: float, seed: int | None
) -> tuple[Outbox, Counter[Status]]:
    """Produce for `seconds`, let the pollers drain the outbox, stop; return the results."""
    outbox = Outbox()
    polls: Counter[Status] = Counter()
    rng = random.Random(seed)
    cj = ConcurrentJob(
        Job("outbox.publish", {"batch_size": batch_size, "failure_rate": failure_rate}),
        worker_factory=lambda: Worker(
            middleware=[count_statuses(polls)], session={"outbox": outbox, "rng": rng}
        ),
        perform_with=PerformWith.SYNC,
        max_workers=pollers,
        start_interval=0.05,  # on-ramp, and the pause between two polls of a worker
    )
    cj.register("outbox.publish", publish_batch)
    async with cj:
        await produce(outbox, seconds, rng)
        if outbox.produced:  # let the pollers publish what is left, then stop
            await asyncio.wait_for(outbox.empty.wait(), timeout=10.0)
    return outbox, polls


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the publisher, print the counts; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to produce (3)")
    parser.add_argument("--pollers", type=int, default=4, help="concurrent pollers (default 4)")
    parser.add_argument("--batch-size", type=int, default=10, help="messages per poll (10)")
    parser.add_argument(
        "--failure-rate", type=float, default=0.05, help="share of failed publishes (0.05)"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable runs")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    if args.pollers < 1 or args.batch_size < 1:
        parser.error("--pollers and --batch-size must be >= 1")
    if not 0 <= args.failure_rate < 1:
        parser.error(f"--failure-rate must be in [0, 1), got {args.failure_rate}")

    outbox, polls = asyncio.run(
        run(args.seconds, args.pollers, args.batch_size, args.failure_rate, args.seed)
    )
    duplicates = len(outbox.published) - len(set(outbox.published))
    print(
        f"produced {outbox.produced}, published {len(outbox.published)}, "
        f"pending {len(outbox.pending)}, duplicates {duplicates}"
    )
    print(f"{sum(polls.values())} polls by {args.pollers} pollers:")
    for status in sorted(polls, key=int):
        print(f"  {int(status)} {status.name:<15} {polls[status]:6d}")
    return 0 if not outbox.pending and not duplicates else 1


if __name__ == "__main__":
    raise SystemExit(main())
