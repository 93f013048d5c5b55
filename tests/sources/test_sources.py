"""consume_source over real servers: every status rule, two consumers, a kill -9, a stop.

Each test runs against PulsarSource (pulsar-lite) and S3Source (SeaweedFS).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pywork import BadRequest, Job, TooManyRequests, Unavailable, Worker
from pywork.types import Handler

CHILD = Path(__file__).with_name("source_consumer.py")


def payloads(n: int) -> list[bytes]:
    return [json.dumps({"n": i}).encode() for i in range(n)]


async def consume_until(
    worker: Worker, source: Any, job: Job, done: asyncio.Event, timeout: float = 20.0, **kw: Any
) -> None:
    """Consume until `done` is set, then stop the worker and wait for consume_source."""
    consuming = asyncio.create_task(worker.consume_source(source, job, **kw))
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await worker.stop(timeout=5)
        await asyncio.wait_for(consuming, 10)


async def test_ack_runs_each_message_once_with_middleware_and_data(backend: Any) -> None:
    # Given 20 JSON messages and one that is not JSON
    await backend.publish([*payloads(20), b"\xffnot json"])
    worker = Worker()
    seen: list[Any] = []
    wrapped: list[str] = []
    done = asyncio.Event()

    def count(handler: Handler) -> Handler:
        async def counted(job: Job) -> None:
            wrapped.append(job.handler)
            await handler(job)

        return counted

    worker.use(count)

    @worker.handler("record")
    async def record(job: Job) -> None:
        assert job.ctx is not None
        seen.append((job.args["received_data"], job.ctx.attempt, job.args["fixed"]))
        if len(seen) == 21:
            done.set()

    # When a worker consumes them
    await consume_until(worker, backend.source(), Job("record", {"fixed": 1}), done)
    # Then each ran once, with its data (bytes when not JSON), attempt 1, through middleware
    data = [d for d, _, _ in seen]
    assert sorted(d["n"] for d in data if isinstance(d, dict)) == list(range(20))
    assert b"\xffnot json" in data
    assert {(attempt, fixed) for _, attempt, fixed in seen} == {(1, 1)}
    assert wrapped == ["record"] * 21
    # And every message was acked: nothing is left
    assert await backend.unsettled() == []


async def test_retryable_is_nacked_with_backoff_then_dead_lettered(backend: Any) -> None:
    # Given a handler that is always unavailable
    await backend.publish([b'{"id": "x"}'])
    worker = Worker()
    attempts: list[tuple[int, float]] = []
    done = asyncio.Event()

    @worker.handler("flaky")
    async def flaky(job: Job) -> None:
        assert job.ctx is not None
        attempts.append((job.ctx.attempt, time.monotonic()))
        if job.ctx.attempt == 3:
            asyncio.get_running_loop().call_later(0.05, done.set)
        raise Unavailable("down")

    # When consumed with max_retries=2
    await consume_until(
        worker, backend.source(), Job("flaky"), done, max_retries=2, backoff=(0.05, 0.2)
    )
    # Then it ran 3 times (attempts 1, 2, 3), then went to the dead letters with the reason
    assert [a for a, _ in attempts] == [1, 2, 3]
    dead = await backend.dead(1)
    assert dead[0][0] == b'{"id": "x"}'
    assert dead[0][1].startswith("UNAVAILABLE (503): Unavailable: down"), dead
    assert await backend.unsettled() == []


async def test_retry_after_is_the_nack_delay(backend: Any) -> None:
    # Given a handler asking to be retried in 1.2 s, then succeeding
    await backend.publish([b"1"])
    worker = Worker()
    runs: list[float] = []
    done = asyncio.Event()

    @worker.handler("later")
    async def later(job: Job) -> None:
        runs.append(time.monotonic())
        assert job.ctx is not None
        if job.ctx.attempt == 1:
            raise TooManyRequests("slow down", retry_after=1.2)
        done.set()

    await consume_until(worker, backend.source(), Job("later"), done, backoff=(0.01, 0.01))
    # Then the second run came after the delay asked for (S3 judges it to the second)
    assert len(runs) == 2
    assert runs[1] - runs[0] >= (1.1 if backend.kind == "pulsar" else 0.2), runs
    assert await backend.unsettled() == []


async def test_other_4xx_is_dead_lettered_at_once(backend: Any) -> None:
    await backend.publish([b'{"bad": true}', b'{"bad": false}'])
    worker = Worker()
    runs: list[Any] = []
    done = asyncio.Event()

    @worker.handler("strict")
    async def strict(job: Job) -> None:
        runs.append(job.args["received_data"])
        if len(runs) == 2:
            asyncio.get_running_loop().call_later(0.05, done.set)
        if job.args["received_data"]["bad"]:
            raise BadRequest("no good")

    await consume_until(worker, backend.source(), Job("strict"), done, max_retries=5)
    # Then the bad one ran once and is dead; the good one was acked
    assert len(runs) == 2
    dead = await backend.dead(1)
    assert dead == [(b'{"bad": true}', "BAD_REQUEST (400): BadRequest: no good")]
    assert await backend.unsettled() == []


async def test_two_consumers_handle_each_message_exactly_once(backend: Any) -> None:
    # Given 200 messages and two workers, each with its own source (consumer)
    total = 200
    await backend.publish(payloads(total))
    seen: list[tuple[str, int]] = []
    done = asyncio.Event()
    workers = [Worker(name="a"), Worker(name="b")]
    for worker in workers:

        async def record(job: Job, name: str = worker.name) -> None:
            await asyncio.sleep(0.002)
            seen.append((name, job.args["received_data"]["n"]))
            if len(seen) >= total:
                done.set()

        worker.register("record", record)
    tasks = [
        asyncio.create_task(w.consume_source(backend.source(), Job("record"), concurrency=8))
        for w in workers
    ]
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        for worker in workers:
            await worker.stop(timeout=5)
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    # Then each message ran exactly once across both
    assert sorted(n for _, n in seen) == list(range(total))
    assert await backend.unsettled() == []


async def test_a_consumer_killed_mid_run_has_its_messages_redelivered(
    backend: Any, tmp_path: Path
) -> None:
    # Given a consumer process that takes 3 messages and hangs in their handlers
    await backend.publish(payloads(6))
    side = tmp_path / "taken"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), *backend.child_args(), str(side), env=env
    )
    try:
        deadline = time.monotonic() + 20
        while not side.exists() or len(side.read_text().split()) < 3:
            assert time.monotonic() < deadline, "the child took nothing"
            assert child.returncode is None
            await asyncio.sleep(0.02)
        taken = {int(n) for n in side.read_text().split()}
    finally:
        # When it is killed with SIGKILL
        child.send_signal(signal.SIGKILL)
        await child.wait()
    # Then another consumer gets every message, those taken with attempt 2
    worker = Worker()
    seen: dict[int, int] = {}
    done = asyncio.Event()

    @worker.handler("record")
    async def record(job: Job) -> None:
        assert job.ctx is not None
        seen[job.args["received_data"]["n"]] = job.ctx.attempt
        if len(seen) == 6:
            done.set()

    await consume_until(worker, backend.source(), Job("record"), done, timeout=30)
    assert sorted(seen) == list(range(6))
    assert all(seen[n] == 2 for n in taken), (taken, seen)
    assert await backend.unsettled() == []


async def test_stop_nacks_unfinished_messages_with_delay_zero(backend: Any) -> None:
    # Given a worker running one handler at a time, two messages taken (one waits for a slot)
    await backend.publish(payloads(2))
    worker = Worker(max_concurrency=1)
    started = asyncio.Event()
    runs: list[int] = []

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        runs.append(job.args["received_data"]["n"])
        started.set()
        await asyncio.sleep(60)

    source = backend.source()
    consuming = asyncio.create_task(worker.consume_source(source, Job("slow"), concurrency=2))
    await asyncio.wait_for(started.wait(), 20)
    # When the worker stops with a short grace period
    t0 = time.monotonic()
    await worker.stop(timeout=0.1)
    await asyncio.wait_for(consuming, 10)
    assert time.monotonic() - t0 < 5
    assert len(runs) == 1
    await source.close()
    # Then nothing was acked or dead-lettered: a new consumer gets both again at once
    again: list[int] = []
    done = asyncio.Event()
    worker2 = Worker()

    @worker2.handler("quick")
    async def quick(job: Job) -> None:
        again.append(job.args["received_data"]["n"])
        if len(again) == 2:
            done.set()

    await consume_until(worker2, backend.source(), Job("quick"), done, timeout=10)
    assert sorted(again) == [0, 1]
    assert await backend.unsettled() == []
