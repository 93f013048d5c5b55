"""The consume loop behind :meth:`Worker.consume`: at-least-once execution of durable jobs.

One :class:`Consumer` runs four tasks, all owned and awaited by :meth:`Consumer.run`:

- the **claimer** leases jobs with ``broker.claim`` in batches, never holding more than
  ``concurrency + prefetch`` jobs (running, leased-but-not-started, or finished and not
  yet settled), so a busy consumer does not hoard jobs other consumers could run; when
  nothing is ready it sleeps in ``broker.wait_for_work`` (no busy loop);
- the **renewer** owns a :class:`~pywork.renewal.LeaseKeeper`: a thread with its own
  event loop and broker connection that extends the leases of every held job every
  ``min(lease / 3, 0.5)`` s, so an ``async def`` handler blocking the event loop does
  not lose them, and warns when the loop stops answering; it hands back cancellations
  (the run is cancelled) and lost leases (the run's result will be dropped: fencing);
- the **settler** buffers outcomes and settles them in batches (every few ms or every
  few hundred outcomes);
- the **ticker** (:func:`pywork.ticker.run_ticker`) fires the broker's due cluster
  schedules, each tick once across every consumer (one compare-and-set per fire).

Before its tasks start, a consumer declares the schedules recorded with
:meth:`Worker.schedule <pywork.Worker.schedule>` (``broker.schedule``, idempotent).

Broker errors (a restarting Redis or PostgreSQL) never crash the consumer: each call is
retried with exponential backoff and logged; nothing is lost, because a job is only
settled once the broker acknowledged it, and a job whose lease lapsed meanwhile is
delivered again.

Every failure is logged as ONE warning on the worker's logger, naming handler, job id,
attempt and status (a timeout, a job going dead, a retry with when it runs next, a
lost lease); successes are logged at DEBUG. The records carry ``job_id``, ``handler``,
``attempt``, ``status`` and, for a retry, ``retry_at`` as attributes (for JSON logs).

Outcome rules (contract §7): SUCCESS and NO_RESPONSE → succeeded; a retryable status
(and UNKNOWN) → failed, retried after ``retry_after`` or a full-jitter backoff while the
attempt is <= max_retries, else dead; any other 4xx → dead at once; a run cut short by
worker shutdown, or never started → queued again without counting the attempt.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pywork._durations import backoff_pair, duration, positive_int
from pywork.brokers.base import Broker, Delivery, JobState, Outcome
from pywork.brokers.front import encode_progress
from pywork.encoding import encode_value
from pywork.errors import JobError, SerializationError
from pywork.job import Progress
from pywork.renewal import LeaseKeeper
from pywork.schedule import Execution, Runner
from pywork.status import Status
from pywork.ticker import run_ticker

if TYPE_CHECKING:
    from pywork.cron import ScheduleSpec
    from pywork.job import Job
    from pywork.types import Handler

__all__ = [
    "DEFAULT_CONCURRENCY",
    "Consumer",
    "Host",
    "adaptive_prefetch",
    "outcome_for",
    "prefetch_for",
    "retry_delay",
]

#: Concurrency of a consumer whose worker has no ``max_concurrency``.
DEFAULT_CONCURRENCY = 100
#: Seconds ``broker.wait_for_work`` may sleep before the claimer looks again anyway.
WAIT_TIMEOUT = 1.0
#: Outcomes buffered before a settle is sent at once, and the most sent in one call.
SETTLE_BATCH = 256
#: Seconds an outcome may wait in the buffer for others to join its batch.
SETTLE_DELAY = 0.002
#: Seconds a prefetched job should wait for a slot, at the recent job durations.
PREFETCH_WAIT = 0.05
#: Backoff of retried broker calls after an error: first delay and cap, in seconds.
ERROR_BACKOFF = (0.05, 2.0)
#: Seconds a stopping consumer waits for a schedule fire in progress before cancelling it.
TICKER_STOP_TIMEOUT = 5.0

_SUCCESS = (Status.SUCCESS, Status.NO_RESPONSE)


#: Statuses that end a run as succeeded (their result is stored).
_SUCCEEDS = frozenset((Status.SUCCESS, Status.NO_RESPONSE))


def prefetch_for(concurrency: int) -> int:
    """The most jobs a consumer of `concurrency` may hold beyond those running.

    As many as its concurrency, at most 100. The prefetch in use adapts between a
    quarter of this and this: it is what the consumer can start within about
    :data:`PREFETCH_WAIT` seconds at its recent job durations, so fast jobs are claimed
    in big batches while slow ones are not hoarded away from other consumers.
    """
    return max(1, min(concurrency, 100))


def adaptive_prefetch(concurrency: int, average_duration: float) -> int:
    """The prefetch for jobs that take `average_duration` seconds (see :func:`prefetch_for`)."""
    most = prefetch_for(concurrency)
    least = max(1, most // 4)
    startable = concurrency * PREFETCH_WAIT / max(average_duration, 1e-6)
    return max(least, min(most, int(startable)))


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full-jitter backoff: a uniform random delay in ``[0, min(cap, base * 2**(attempt-1))]``."""
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    return (rng or random).uniform(0.0, ceiling)


def describe(error: BaseException | None) -> str | None:
    """``"<ExceptionType>: <message>"`` for a job record, or None."""
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"


def outcome_for(
    delivery: Delivery,
    status: Status,
    error: BaseException | None,
    *,
    max_retries: int,
    backoff: tuple[float, float],
    stopping: bool = False,
) -> Outcome:
    """Turn a run's final status into the Outcome to settle (the rules in the module doc).

    Args:
        delivery: the leased job.
        status: the execution's final status.
        error: the exception that ended it, if any (its ``retry_after`` is honoured).
        max_retries: the consumer's default; ``job.max_retries`` overrides it.
        backoff: ``(base, cap)`` of the full-jitter backoff.
        stopping: the run was cancelled because the worker is stopping.
    """
    if status in _SUCCESS:
        return Outcome(delivery, JobState.SUCCEEDED, status)
    if status is Status.CANCELLED and stopping:
        return Outcome(delivery, JobState.QUEUED)
    text = describe(error)
    if 400 <= status < 500 and not status.is_retryable:
        return Outcome(delivery, JobState.DEAD, status, text)
    job = delivery.job
    limit = job.max_retries if job is not None and job.max_retries is not None else max_retries
    if delivery.attempt > limit:
        return Outcome(delivery, JobState.DEAD, status, text)
    if isinstance(error, JobError) and error.retry_after is not None:
        retry_in = error.retry_after
    else:
        retry_in = retry_delay(delivery.attempt, *backoff)
    return Outcome(delivery, JobState.FAILED, status, text, retry_in)


class Host(Runner, Protocol):
    """What a Consumer needs of its worker (a :class:`pywork.Worker`).

    The internal API between this module and the worker, a Protocol so that this
    module does not import the worker module. Not for users.
    """

    @property
    def cluster_schedules(self) -> Mapping[str, tuple[Job, ScheduleSpec]]:
        """The cluster schedules to declare before consuming, by name."""
        ...

    async def start(self) -> None:
        """Start the worker (idempotent)."""
        ...

    def chain_for(self, handler: str) -> Handler | None:
        """The middleware chain of `handler`, or None when it is not registered."""
        ...

    def max_retries_for(self, handler: str) -> int | None:
        """The `max_retries` option `handler` was registered with, or None."""
        ...

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        """Call `hook` when the worker's stop begins."""
        ...

    def remove_stop_hook(self, hook: Callable[[], None]) -> None:
        """Undo :meth:`add_stop_hook`."""
        ...

    async def wait_stopped(self) -> None:
        """Wait until a stop that has begun has completed."""
        ...


class _Lease:
    """One job this consumer holds, from claim to settle."""

    __slots__ = ("cancelled", "delivery", "execution", "lost", "progress_sent", "settling")

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        self.execution: Execution | None = None
        self.progress_sent: Progress | None = None  # the report the broker has stored
        self.cancelled = False  # broker.cancel: the run is cancelled, nothing is settled
        self.lost = False  # the lease lapsed and the job was taken back: result dropped
        self.settling = False  # its outcome is being settled: no renewal needed


class Consumer:
    """Takes jobs from a broker and runs them on a worker; see :meth:`Worker.consume`.

    Raises:
        TypeError, ValueError: an argument is invalid.
    """

    def __init__(
        self,
        worker: Host,
        broker: Broker,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int | None = None,
        lease: float | timedelta = 30.0,
        max_retries: int = 3,
        backoff: tuple[float | timedelta, float | timedelta] = (1.0, 300.0),
    ) -> None:
        if not isinstance(broker, Broker):
            raise TypeError(f"broker must be a pywork broker (see pywork.connect), got {broker!r}")
        if isinstance(queues, str | bytes) or not isinstance(queues, Sequence):
            raise TypeError(
                f"queues must be a sequence of queue names such as ('default',), got {queues!r}"
            )
        if not queues or not all(isinstance(q, str) and q for q in queues):
            raise ValueError(f"queues must hold at least one non-empty str, got {queues!r}")
        if concurrency is None:
            concurrency = worker.max_concurrency or DEFAULT_CONCURRENCY
        self.concurrency = positive_int(concurrency, "concurrency")
        self.lease = duration(lease, "lease", allow_zero=False)
        self.max_retries = positive_int(max_retries, "max_retries", minimum=0)
        self.backoff = backoff_pair(backoff)
        self.queues = tuple(dict.fromkeys(queues))
        self.prefetch = adaptive_prefetch(self.concurrency, 1.0)  # until runs are timed
        self._average_duration = 1.0  # seconds, moving average of recent runs
        self.renew_every = min(self.lease / 3.0, 0.5)
        self.worker = worker
        self.broker = broker
        self._logger = worker.logger
        self._held: dict[str, _Lease] = {}  # job id -> lease, until settled or dropped
        self._pending: deque[_Lease] = deque()  # leased, not started
        self._running = 0
        self._outbox: list[Outcome] = []
        self._stopping = False
        self._closing = False
        self._starved = False  # the claimer waits for held jobs to be settled
        self._stop_event = asyncio.Event()
        self._changed = asyncio.Event()  # held count went down, or stopping
        self._outbox_event = asyncio.Event()
        self._closed = asyncio.Event()

    # the loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Consume until the worker's :meth:`~Worker.stop` completed, then return.

        If this coroutine is cancelled, it stops taking jobs, cancels its running jobs
        (they go back to the queue), settles what it holds and re-raises.
        """
        worker = self.worker
        await self._declare_schedules()
        await worker.start()
        worker.add_stop_hook(self._begin_stop)
        loop = asyncio.get_running_loop()
        claimer = loop.create_task(self._claim_loop(), name="pywork-consumer-claim")
        renewer = loop.create_task(self._renew_loop(), name="pywork-consumer-renew")
        settler = loop.create_task(self._settle_loop(), name="pywork-consumer-settle")
        ticker = loop.create_task(
            run_ticker(self.broker, self._stop_event, self._logger), name="pywork-consumer-ticker"
        )
        self._logger.info(
            "consuming %s from %s (concurrency %d, lease %gs)",
            ",".join(self.queues),
            type(self.broker).__name__,
            self.concurrency,
            self.lease,
        )
        try:
            try:
                await self._stop_event.wait()
                await worker.wait_stopped()
            except asyncio.CancelledError:
                self._begin_stop()
                await self._cancel_runs()
                raise
            finally:
                await self._finish(claimer, renewer, settler, ticker)
        finally:
            worker.remove_stop_hook(self._begin_stop)

    async def _declare_schedules(self) -> None:
        """Declare the schedules recorded with Worker.schedule (idempotent upserts)."""
        declared = list(self.worker.cluster_schedules.items())
        if not declared:
            return
        for name, (job, spec) in declared:
            record = await self.broker.schedule(
                name,
                job,
                every=spec.every,
                cron=spec.cron,
                timezone=spec.timezone,
                jitter=spec.jitter,
                misfire=spec.misfire,
            )
            timing = f"every {spec.every:g}s" if spec.every is not None else f"cron {spec.cron!r}"
            if spec.cron is not None:
                timing += f" ({spec.timezone})"
            self._logger.info(
                "schedule %s declared: %s -> %s, next run %s",
                name,
                timing,
                job.handler,
                record.next_run_at.isoformat(),
            )

    def _begin_stop(self) -> None:
        """Stop taking jobs and give back the ones not started (called as stop() begins)."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_event.set()
        self._changed.set()
        self._release_pending()

    def _release_pending(self) -> None:
        while self._pending:
            lease = self._pending.popleft()
            if not lease.lost and not lease.cancelled:
                self._post(Outcome(lease.delivery, JobState.QUEUED))
            else:
                self._drop(lease)

    async def _cancel_runs(self) -> None:
        tasks = []
        for lease in list(self._held.values()):
            execution = lease.execution
            if execution is not None and not execution.done():
                execution.cancel()
                tasks.append(execution.task)
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)

    async def _finish(
        self,
        claimer: asyncio.Task[None],
        renewer: asyncio.Task[None],
        settler: asyncio.Task[None],
        ticker: asyncio.Task[None],
    ) -> None:
        await asyncio.wait([claimer])  # never cancelled mid-claim: its jobs would be orphaned
        # a fire is atomic in the broker, so cancelling one stuck on a broker call is safe
        await asyncio.wait([ticker], timeout=TICKER_STOP_TIMEOUT)
        if not ticker.done():
            ticker.cancel()
            await asyncio.wait([ticker])
        self._release_pending()
        for lease in list(self._held.values()):  # runs that ignored cancellation at stop
            execution = lease.execution
            if execution is not None and not execution.done():
                self._logger.error(
                    "job %s (%s) still running after stop: released to the queue",
                    lease.delivery.id,
                    execution.job.handler,
                )
                lease.execution = None
                self._post(Outcome(lease.delivery, JobState.QUEUED))
        self._closing = True
        self._outbox_event.set()
        await asyncio.wait([settler])
        self._closed.set()
        await asyncio.wait([renewer])
        for task in (claimer, renewer, settler, ticker):
            if task is None:
                continue
            error = None if task.cancelled() else task.exception()
            if error is not None:
                self._logger.error("consumer task %s failed", task.get_name(), exc_info=error)

    # claiming -------------------------------------------------------------------
    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping:
            self._changed.clear()
            self.prefetch = adaptive_prefetch(self.concurrency, self._average_duration)
            room = self.concurrency + self.prefetch - len(self._held)
            # claim in batches of at least `prefetch` (fewer round trips), unless the
            # consumer holds nothing that could keep its slots busy meanwhile
            if room < self.prefetch:
                self._starved = True  # the settler flushes at once: we wait for room
                self._outbox_event.set()
                await self._changed.wait()
                self._starved = False
                continue
            try:
                deliveries = await self.broker.claim(
                    self.queues, room, lease=self.lease, max_retries=self.max_retries
                )
            except Exception as exc:
                failures += 1
                await self._pause_after_error("claim", exc, failures)
                continue
            failures = 0
            self._accept(deliveries)
            if len(deliveries) < room and not self._stopping:
                try:
                    await self._until_stopped(self.broker.wait_for_work(self.queues, WAIT_TIMEOUT))
                except Exception as exc:
                    failures += 1
                    await self._pause_after_error("wait", exc, failures)

    async def _until_stopped(self, coro: Any) -> None:
        """Await `coro`, cancelling it if the consumer starts stopping meanwhile."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pending in (task, stop):
                if not pending.done():
                    pending.cancel()
            await asyncio.wait([task, stop])
        if not task.cancelled():
            task.result()

    async def _pause_after_error(self, what: str, exc: Exception, failures: int) -> None:
        first, cap = ERROR_BACKOFF
        delay = retry_delay(failures, first * 2, cap) + first / 2
        self._logger.warning(
            "broker %s failed (%s: %s); retrying in %.2fs", what, type(exc).__name__, exc, delay
        )
        if what in ("claim", "wait"):
            await self._until_stopped(asyncio.sleep(delay))
        else:
            await asyncio.sleep(delay)

    def _accept(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            lease = _Lease(delivery)
            previous = self._held.get(delivery.id)
            if previous is not None:  # our own lease lapsed and we were given the job again
                self._lease_ended(previous, "lost")
            self._held[delivery.id] = lease
            job = delivery.job
            if self._stopping:
                self._post(Outcome(delivery, JobState.QUEUED))
            elif job is None:
                error = delivery.error or "DecodeError: the stored message cannot be decoded"
                outcome = Outcome(delivery, JobState.DEAD, Status.BAD_REQUEST, error)
                self._log_outcome(outcome, "?")
                self._post(outcome)
            elif self.worker.chain_for(job.handler) is None:
                text = f"HandlerNotFound: no handler registered for {job.handler!r}"
                outcome = outcome_for(
                    delivery,
                    Status.NOT_FOUND,
                    None,
                    max_retries=self.max_retries,
                    backoff=self.backoff,
                )
                outcome.error = text
                self._log_outcome(outcome, job.handler)
                self._post(outcome)
            else:
                self._pending.append(lease)
        self._fill()

    def _fill(self) -> None:
        """Start leased jobs while there are free slots."""
        worker = self.worker
        while self._pending and self._running < self.concurrency and not self._stopping:
            lease = self._pending.popleft()
            if lease.lost or lease.cancelled:
                self._drop(lease)
                continue
            job = lease.delivery.job
            assert job is not None
            chain = worker.chain_for(job.handler)
            if chain is None:  # cannot happen: handlers are never unregistered
                self._post(Outcome(lease.delivery, JobState.QUEUED))
                continue
            execution = worker.launch(job, chain, attempt=lease.delivery.attempt)
            lease.execution = execution
            self._running += 1
            execution.task.add_done_callback(functools.partial(self._ended, lease))

    def _ended(self, lease: _Lease, _: object = None) -> None:
        """An execution finished (done callback): decide its outcome."""
        self._running -= 1
        execution = lease.execution
        if execution is None:  # released at stop while it ignored cancellation
            return
        took = execution.duration
        if took is not None:
            self._average_duration += (took - self._average_duration) * 0.05
        if lease.lost:  # warned when the lease was lost
            self._logger.info(
                "job %s (%s) attempt %d finished with %d %s after its lease was lost: "
                "result dropped",
                lease.delivery.id,
                execution.job.handler,
                lease.delivery.attempt,
                execution.status.value,
                execution.status.name,
            )
            self._drop(lease)
        elif lease.cancelled:
            self._logger.info("job %s cancelled through the broker", lease.delivery.id)
            self._drop(lease)
        else:
            status, error = execution.status, execution.error
            result = None
            if execution.result is not None and status in _SUCCEEDS:
                try:
                    result = encode_value(execution.result, "result")
                except SerializationError as exc:  # the result cannot be stored: a failure
                    status, error = Status.INTERNAL_ERROR, exc
            retries = self.worker.max_retries_for(execution.job.handler)
            outcome = outcome_for(
                lease.delivery,
                status,
                error,
                max_retries=self.max_retries if retries is None else retries,
                backoff=self.backoff,
                stopping=self._stopping,
            )
            outcome.result = result
            progress = execution.progress
            if progress is not None and progress is not lease.progress_sent:
                outcome.progress = encode_progress(progress)
            self._log_outcome(outcome, execution.job.handler, took)
            self._post(outcome)
        self._fill()

    def _log_outcome(self, outcome: Outcome, handler: str, took: float | None = None) -> None:
        """One line per settled run: a WARNING for a failure, DEBUG for a success."""
        state, status = outcome.state, outcome.status
        failed = state is JobState.FAILED or state is JobState.DEAD
        logger = self._logger
        if not failed and not logger.isEnabledFor(logging.DEBUG):
            return  # the hot path: a success with debug logging off costs one check
        delivery = outcome.delivery
        code = 0 if status is None else int(status)
        extra: dict[str, Any] = {
            "job_id": delivery.id,
            "handler": handler,
            "attempt": delivery.attempt,
            "status": code,
        }
        head = f"job {delivery.id} ({handler}) attempt {delivery.attempt}: "
        reason = f": {outcome.error}" if outcome.error else ""
        named = f"{code} {status.name}" if status is not None else "-"
        if state is JobState.FAILED:
            retry_in = float(outcome.retry_in or 0.0)
            at = datetime.now().astimezone() + timedelta(seconds=retry_in)
            extra["retry_at"] = at.isoformat(timespec="milliseconds")
            logger.warning(
                "%s%s, retry in %.2fs at %s%s",
                head, named, retry_in, extra["retry_at"], reason, extra=extra,
            )  # fmt: skip
        elif state is JobState.DEAD:
            retryable = status is not None and status.is_retryable
            why = "dead after its last retry" if retryable else "dead"
            logger.warning("%s%s, %s%s", head, named, why, reason, extra=extra)
        elif state is JobState.SUCCEEDED:
            spent = f" in {took * 1000:.1f}ms" if took is not None else ""
            logger.debug("%s%s, succeeded%s", head, named, spent, extra=extra)
        else:  # cut short by the worker's stop
            logger.debug("%s%s, back to the queue", head, named, extra=extra)

    def _drop(self, lease: _Lease) -> None:
        if self._held.get(lease.delivery.id) is lease:
            del self._held[lease.delivery.id]
            self._changed.set()

    # settling -------------------------------------------------------------------
    def _post(self, outcome: Outcome) -> None:
        self._outbox.append(outcome)
        self._outbox_event.set()

    async def _settle_loop(self) -> None:
        while True:
            if not self._outbox:
                if self._closing:
                    return
                self._outbox_event.clear()
                await self._outbox_event.wait()
                continue
            if (
                not self._closing
                and not self._starved
                and self._running
                and len(self._outbox) < SETTLE_BATCH
            ):  # more outcomes are coming: let them join this batch
                await asyncio.sleep(SETTLE_DELAY)
            batch = self._outbox[:SETTLE_BATCH]
            del self._outbox[: len(batch)]
            await self._settle(batch)

    async def _settle(self, batch: list[Outcome]) -> None:
        held = self._held
        live: list[Outcome] = []
        for outcome in batch:
            lease = held.get(outcome.delivery.id)
            if lease is None or lease.delivery is not outcome.delivery:
                continue  # replaced by a newer delivery of the same job
            if lease.lost:
                self._logger.warning(
                    "job %s: outcome %s dropped: its lease was lost",
                    outcome.delivery.id,
                    outcome.state.value,
                )
                self._drop(lease)
            elif lease.cancelled:
                self._drop(lease)
            else:
                lease.settling = True
                live.append(outcome)
        applied = await self._settle_retrying(live) if live else []
        for outcome, ok in zip(live, applied, strict=True):
            if not ok:
                self._logger.warning(
                    "job %s: outcome %s dropped (its lease was lost or it was cancelled)",
                    outcome.delivery.id,
                    outcome.state.value,
                )
            lease = held.get(outcome.delivery.id)
            if lease is not None and lease.delivery is outcome.delivery:
                self._drop(lease)

    async def _settle_retrying(self, live: list[Outcome]) -> list[bool]:
        """broker.settle, retried on errors (for at most a lease's time once closing)."""
        failures = 0
        deadline: float | None = None
        while True:
            try:
                return await self.broker.settle(live)
            except Exception as exc:
                failures += 1
                if self._closing:
                    deadline = deadline or time.monotonic() + self.lease
                    if time.monotonic() > deadline:
                        self._logger.error(
                            "could not settle %d jobs at stop (%s: %s); they are delivered "
                            "again once their leases expire",
                            len(live),
                            type(exc).__name__,
                            exc,
                        )
                        return [False] * len(live)
                await self._pause_after_error("settle", exc, failures)

    # lease renewal --------------------------------------------------------------
    async def _renew_loop(self) -> None:
        """Renew from a LeaseKeeper thread until the consumer is closed, then stop it."""
        keeper = LeaseKeeper(
            self.broker,
            lease=self.lease,
            every=self.renew_every,
            held=lambda: list(self._held.values()),
            ended=self._leases_ended,
            logger=self._logger,
        )
        keeper.start()
        try:
            await self._closed.wait()
        finally:
            await keeper.stop()

    def _leases_ended(self, reasons: Mapping[_Lease, str]) -> None:
        """The keeper's renewal said these leases ended (called on the consumer's loop)."""
        for lease, reason in reasons.items():
            # a settle that overtook this renewal ended the lease: that is no loss
            if self._held.get(lease.delivery.id) is lease and not lease.settling:
                self._lease_ended(lease, reason)

    def _lease_ended(self, lease: _Lease, reason: str) -> None:
        execution = lease.execution
        if reason == "cancelled":
            lease.cancelled = True
            if execution is not None and not execution.done():
                execution.cancel()
            elif execution is None and lease not in self._pending:
                self._drop(lease)  # already settled or about to be: settle will say False
        else:
            if not lease.lost:
                delivery = lease.delivery
                handler = delivery.job.handler if delivery.job is not None else "?"
                status = execution.status if execution is not None else None
                state = "running" if execution is not None and not execution.done() else "held"
                self._logger.warning(
                    "job %s (%s) attempt %d: lease lost while %s (status %s): it expired and "
                    "the job was taken back; this run's result will be dropped",
                    delivery.id,
                    handler,
                    delivery.attempt,
                    state,
                    "-" if status is None or state == "running" else int(status),
                    extra={
                        "job_id": delivery.id,
                        "handler": handler,
                        "attempt": delivery.attempt,
                        "status": None if status is None or state == "running" else int(status),
                    },
                )
            lease.lost = True
            if execution is None and lease not in self._pending:
                self._drop(lease)
