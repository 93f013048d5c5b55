"""The loop behind :meth:`Worker.consume_source`: run a job per message, then settle it.

One :class:`SourceConsumer` takes messages from a :class:`~pywork.sources.Source` while
fewer than `concurrency` are unsettled, runs ``job.copy()`` for each through the
worker's public :meth:`~pywork.Worker.perform` (so middleware, ``max_concurrency``,
timeouts and the outcome rules apply as for any run), and settles each with the same
decision as a durable queue (:func:`pywork.consumer.outcome_for`):

- SUCCESS / NO_RESPONSE → ``message.ack()``;
- a retryable status (and UNKNOWN) → ``message.nack(delay)`` with the full-jitter backoff
  or the error's ``retry_after``, until the attempt exceeds ``max_retries``
  (``job.max_retries`` overrides), then ``source.dead_letter(message, reason)``;
- any other 4xx → ``source.dead_letter`` at once;
- a run cut short by ``worker.stop()``, and a message taken but not started when the
  stop begins → ``message.nack(0)`` (never acked, never dead-lettered).

Every task here belongs to the consumer: :meth:`SourceConsumer.run` returns only once
every message it took is settled. Sources have no schedules: nothing ticks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pywork._durations import backoff_pair, positive_int
from pywork.brokers.base import Delivery, JobState, Outcome
from pywork.consumer import DEFAULT_CONCURRENCY, outcome_for, retry_delay
from pywork.errors import HandlerNotFound, WorkerNotRunning
from pywork.job import Job
from pywork.sources.base import Message, Source
from pywork.status import Status

if TYPE_CHECKING:
    from pywork.schedule import Execution


class SourceHost(Protocol):
    """What :class:`SourceConsumer` needs of its worker (a :class:`pywork.Worker`): a
    Protocol, so that this module does not import the worker module. Not for users."""

    @property
    def handlers(self) -> list[str]:
        """The registered handler names."""
        ...

    @property
    def max_concurrency(self) -> int | None:
        """The most executions at once, or None."""
        ...

    @property
    def logger(self) -> logging.Logger | logging.LoggerAdapter[Any]:
        """Where worker events go."""
        ...

    async def start(self) -> None:
        """Start the worker (idempotent)."""
        ...

    async def stop(self, timeout: float | timedelta = 30.0) -> None:
        """Stop the worker (waits for a stop that has begun)."""
        ...

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when stop begins; returns its remover."""
        ...

    async def perform(self, job: Job, *, wait: bool = False, attempt: int = 1) -> Execution:
        """Run `job` now."""
        ...

    def max_retries_for(self, handler: str) -> int | None:
        """The handler's `max_retries` option, or None."""
        ...


__all__ = ["SourceConsumer", "dead_letter_reason"]

#: Tries of a settle call (ack, nack, dead letter) before the message is left to the
#: source's redelivery, and the first pause between them in seconds (doubling).
SETTLE_TRIES = 4
SETTLE_PAUSE = 0.05
#: Backoff after a source failed to give a message: first delay and cap, in seconds.
SOURCE_ERROR_BACKOFF = (0.05, 2.0)


def dead_letter_reason(status: Status, error: str | None) -> str:
    """The reason stored with a dead letter: ``"BAD_REQUEST (400): BadRequest: no id"``."""
    head = f"{status.name} ({int(status)})"
    return f"{head}: {error}" if error else head


class SourceConsumer:
    """Takes messages from a source and runs them on a worker; see
    :meth:`Worker.consume_source <pywork.Worker.consume_source>`.

    Raises:
        TypeError, ValueError: an argument is invalid.
        HandlerNotFound: ``job.handler`` is not registered in `worker`.
    """

    def __init__(
        self,
        worker: SourceHost,
        source: Source,
        job: Job,
        *,
        concurrency: int | None = None,
        max_retries: int = 3,
        backoff: tuple[float | timedelta, float | timedelta] = (1.0, 300.0),
    ) -> None:
        if not isinstance(source, Source):
            raise TypeError(
                "source must be a pywork.sources.Source (an async iterator of messages "
                f"with dead_letter() and close()), got {source!r}"
            )
        if not isinstance(job, Job):
            raise TypeError(f"job must be a pywork.Job, got {job!r}")
        if job.handler not in worker.handlers:
            known = ", ".join(map(repr, worker.handlers)) or "none"
            raise HandlerNotFound(
                f"no handler registered for {job.handler!r} (registered: {known})"
            )
        if concurrency is None:
            concurrency = worker.max_concurrency or DEFAULT_CONCURRENCY
        self.concurrency = positive_int(concurrency, "concurrency")
        self.max_retries = positive_int(max_retries, "max_retries", minimum=0)
        self.backoff = backoff_pair(backoff)
        self.worker = worker
        self.source = source
        self.job = job
        self._logger = worker.logger
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()  # one per message taken, until settled
        self._executions: set[Execution] = set()

    async def run(self) -> None:
        """Consume until ``worker.stop()`` completed or the source is exhausted.

        If this coroutine is cancelled, it stops taking messages, cancels its runs
        (they are nacked with delay 0), waits for the settles and re-raises.
        """
        worker = self.worker
        await worker.start()
        remove_hook = worker.on_stop(self._begin_stop)
        self._logger.info(
            "consuming %s into %s (concurrency %d)",
            type(self.source).__name__,
            self.job.handler,
            self.concurrency,
        )
        try:
            try:
                stopped = await self._take_loop()
            except asyncio.CancelledError:
                self._begin_stop()
                for execution in list(self._executions):
                    execution.cancel()
                await self._settled()
                raise
            await self._settled()
        finally:
            remove_hook()
        if stopped:
            await worker.stop()  # already stopping: waits until the stop completed

    def _begin_stop(self) -> None:
        """Stop taking messages (called as ``worker.stop()`` begins)."""
        self._stopping = True
        self._stop_event.set()

    async def _settled(self) -> None:
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def _until_stop(self, aw: asyncio.Future[Any]) -> bool:
        """Wait for `aw` or the stop; True when `aw` finished first."""
        if self._stopping:
            return aw.done()
        stop = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait([aw, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not stop.done():
                stop.cancel()
        return aw.done()

    async def _take_loop(self) -> bool:
        """Take messages while slots are free; True once stopped, False once exhausted."""
        slots = asyncio.Semaphore(self.concurrency)
        failures = 0
        while not self._stopping:
            slot = asyncio.ensure_future(slots.acquire())
            if not await self._until_stop(slot):
                slot.cancel()
                await asyncio.wait([slot])
                if not slot.cancelled():
                    slots.release()
                break
            fetch: asyncio.Future[Message] = asyncio.ensure_future(anext(self.source))
            if not await self._until_stop(fetch):
                fetch.cancel()
                await asyncio.wait([fetch])
            if fetch.cancelled():
                slots.release()
                break
            error = fetch.exception()
            if isinstance(error, StopAsyncIteration):
                slots.release()
                return False
            if error is not None:
                slots.release()
                failures += 1
                first, cap = SOURCE_ERROR_BACKOFF
                pause = first + retry_delay(failures, first * 2, cap)
                self._logger.warning(
                    "source %s failed to give a message (%s: %s); retrying in %.2fs",
                    type(self.source).__name__,
                    type(error).__name__,
                    error,
                    pause,
                )
                await self._until_stop(asyncio.ensure_future(asyncio.sleep(pause)))
                continue
            failures = 0
            task = asyncio.get_running_loop().create_task(self._handle(fetch.result()))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _: slots.release())
        return True

    async def _handle(self, message: Message) -> None:
        """Run the job for `message` and settle it."""
        attempt = message.attempt if isinstance(message.attempt, int) else 1
        attempt = max(1, attempt)
        job = self.job.copy()
        job.args["received_data"] = message.data
        delivery = Delivery(message.id, "", attempt, job)
        if self._stopping:  # taken, never started
            await self._settle(message, Outcome(delivery, JobState.QUEUED))
            return
        try:
            execution = await self.worker.perform(job, attempt=attempt)
        except WorkerNotRunning:  # the stop began meanwhile
            await self._settle(message, Outcome(delivery, JobState.QUEUED))
            return
        self._executions.add(execution)
        try:
            await execution.wait()
        finally:
            self._executions.discard(execution)
        retries = self.worker.max_retries_for(job.handler)  # the handler's own option
        outcome = outcome_for(
            delivery,
            execution.status,
            execution.error,
            max_retries=self.max_retries if retries is None else retries,
            backoff=self.backoff,
            stopping=self._stopping,
        )
        await self._settle(message, outcome)

    async def _settle(self, message: Message, outcome: Outcome) -> None:
        """Apply `outcome` to `message`, retrying a failed call a few times."""
        state = outcome.state
        if state is JobState.DEAD:
            status = outcome.status if outcome.status is not None else Status.UNKNOWN
            reason = dead_letter_reason(status, outcome.error)
            self._logger.warning("message %s dead-lettered: %s", message.id, reason)
        pause = SETTLE_PAUSE
        for attempt in range(1, SETTLE_TRIES + 1):
            try:
                if state is JobState.SUCCEEDED:
                    await message.ack()
                elif state is JobState.FAILED:
                    await message.nack(outcome.retry_in)
                elif state is JobState.DEAD:
                    await self.source.dead_letter(message, reason)
                else:  # QUEUED: released at stop
                    await message.nack(0.0)
                return
            except Exception as exc:
                if attempt == SETTLE_TRIES:
                    self._logger.error(
                        "could not settle message %s (%s: %s); the source delivers it again",
                        message.id,
                        type(exc).__name__,
                        exc,
                    )
                    return
                self._logger.warning(
                    "settling message %s failed (%s: %s); retrying",
                    message.id,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(random.uniform(pause / 2, pause))
                pause *= 2
