"""Worker: registers handlers, wraps them in middleware, performs jobs (go-work CommonWorker)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pywork._durations import duration, positive_int
from pywork.channel import Channel
from pywork.cron import ScheduleSpec, declare
from pywork.errors import (
    HandlerAlreadyRegistered,
    HandlerNotFound,
    JobError,
    WorkerNotRunning,
)
from pywork.handler import log_failure, with_outcome
from pywork.job import Job
from pywork.schedule import Execution, Schedule
from pywork.status import Status
from pywork.types import Adapter, AnyHandler, Handler

if TYPE_CHECKING:
    from pywork.brokers.base import Broker
    from pywork.sources import Source

__all__ = ["Worker"]

H = TypeVar("H", bound=AnyHandler)

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"
_CANCELLED = Status.CANCELLED
_YIELD_EVERY = 256  # runs launched from a synchronous source between yields to the loop


class Worker:
    """Registers handlers and performs jobs now, later, repeatedly or per received value.

    Args:
        middleware: worker-wide adapters, outside any per-handler adapters; the last
            is outermost, as in :func:`pywork.adapt`.
        max_concurrency: the most executions running at once; excess runs wait their
            turn in order. None for no limit. Also sizes the thread pool of plain handlers.
        logger: where tracebacks and worker events go (default ``logging.getLogger("pywork")``).
        session: shared resources for handlers (``job.ctx.worker.session``).
        name: a name for logs and the ops app.

    Use it as ``async with Worker() as worker:`` or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        middleware: Sequence[Adapter] = (),
        max_concurrency: int | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        session: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(middleware, str | bytes) or not isinstance(middleware, Sequence):
            raise TypeError(f"middleware must be a sequence of adapters, got {middleware!r}")
        _check_adapters(middleware)
        if max_concurrency is not None:
            max_concurrency = positive_int(max_concurrency, "max_concurrency")
        if logger is not None and not isinstance(logger, logging.Logger | logging.LoggerAdapter):
            raise TypeError(f"logger must be a logging.Logger or LoggerAdapter, got {logger!r}")
        if session is not None and not isinstance(session, Mapping):
            raise TypeError(f"session must be a mapping (e.g. a dict), got {session!r}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"name must be None or a non-empty str, got {name!r}")
        self.name = name or "pywork"
        self.logger = logger or logging.getLogger("pywork")
        self.session: dict[str, Any] = dict(session or {})
        self.max_concurrency = max_concurrency
        self._middleware: list[Adapter] = list(middleware)
        self._handlers: dict[str, Handler] = {}
        self._chains: dict[str, Handler] = {}
        self._state = _NEW
        self._stopping: asyncio.Future[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._executions: set[Execution] = set()
        self._schedules: set[Schedule] = set()
        self._active = 0
        self._number: int | None = None  # set by ConcurrentJob
        self._wall_offset = time.time() - time.monotonic()  # wall clock = monotonic + offset
        self._stop_hooks: list[Callable[[], None]] = []  # called when stop() begins (consumers)
        self._cluster_schedules: dict[str, tuple[Job, ScheduleSpec]] = {}  # applied by consume

    # registration -------------------------------------------------------------
    def register(self, name: str, handler: AnyHandler) -> None:
        """Register `handler` (async or plain function taking a Job) under `name`.

        Raises:
            TypeError: `name` is not a str or `handler` is not callable.
            ValueError: `name` is empty.
            HandlerAlreadyRegistered: `name` is taken.
        """
        check_handler_name(name)
        if name in self._handlers:
            raise HandlerAlreadyRegistered(f"a handler named {name!r} is already registered")
        self._handlers[name] = with_outcome(handler)
        if self._state == _RUNNING:
            self._chains[name] = self._compose(name)

    @overload
    def handler(self, name: H) -> H: ...
    @overload
    def handler(self, name: str | None = None) -> Callable[[H], H]: ...

    def handler(self, name: str | H | None = None) -> H | Callable[[H], H]:
        """Decorator registering a function under `name` (default: its ``__name__``).

        Both ``@worker.handler`` and ``@worker.handler("email.send")`` work.
        """
        if callable(name):
            func = name
            self.register(func.__name__, func)
            return func
        if name is not None and not isinstance(name, str):
            raise TypeError(f"handler name must be a str or None, got {name!r}")

        def decorator(func: H) -> H:
            self.register(name or func.__name__, func)
            return func

        return decorator

    def use(self, *adapters: Adapter) -> None:
        """Add worker-wide middleware (outermost last). Only before :meth:`start`.

        Raises:
            RuntimeError: the worker was started.
            TypeError: an adapter is not callable.
        """
        if self._state != _NEW:
            raise RuntimeError("Worker.use() must be called before the worker starts")
        _check_adapters(adapters)
        self._middleware.extend(adapters)

    @property
    def handlers(self) -> list[str]:
        """The registered handler names, in registration order."""
        return list(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def _compose(self, name: str) -> Handler:
        chain = self._handlers[name]
        for adapter in self._middleware:
            chain = adapter(chain)
        return chain

    # lifecycle ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True between :meth:`start` and the beginning of :meth:`stop`."""
        return self._state == _RUNNING

    @property
    def active(self) -> int:
        """Executions in progress (started, not finished)."""
        return self._active

    async def start(self) -> None:
        """Start the worker (idempotent; a stopped worker can be started again)."""
        if self._state == _RUNNING:
            return
        if self._state == _STOPPING:
            raise RuntimeError("the worker is stopping; await stop() before starting it again")
        if self.max_concurrency is not None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        self._chains = {name: self._compose(name) for name in self._handlers}
        self._wall_offset = time.time() - time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._state = _RUNNING

    async def stop(self, timeout: float | timedelta = 30.0) -> None:
        """Stop: cancel schedules and timers, wait for running executions up to
        `timeout` seconds, then cancel them (status CANCELLED). Idempotent."""
        grace = duration(timeout, "timeout")
        if self._state == _STOPPING and self._stopping is not None:
            await asyncio.shield(self._stopping)
            return
        if self._state != _RUNNING:
            return
        self._state = _STOPPING
        self._stopping = asyncio.get_running_loop().create_future()
        for hook in list(self._stop_hooks):
            hook()
        try:
            await self._shutdown(grace)
        finally:
            self._state = _STOPPED
            self._stopping.set_result(None)

    async def _shutdown(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        schedules = list(self._schedules)
        for schedule in schedules:
            schedule._close_intake()
        drivers = [s._driver for s in schedules if s._driver is not None]
        if drivers:
            await asyncio.gather(*drivers, return_exceptions=True)
        tasks = {execution._task for execution in self._executions}
        if tasks:
            _, tasks = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        if tasks:
            for execution in list(self._executions):
                execution.cancel()
            _, stuck = await asyncio.wait(tasks, timeout=5.0)
            if stuck:
                self.logger.error("%d executions ignored cancellation at stop", len(stuck))
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await _shutdown_pool(pool, max(1.0, deadline - time.monotonic()), self.logger)

    def on_stop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (no arguments) when :meth:`stop` begins, before it waits for runs.

        For loops that feed the worker, such as :meth:`consume_source`: they stop taking
        work at once, while running executions finish. Returns a function that removes
        the callback again (call it when the loop ends).

        Raises:
            TypeError: `callback` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self._stop_hooks.append(callback)

        def remove() -> None:
            if callback in self._stop_hooks:
                self._stop_hooks.remove(callback)

        return remove

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _thread_pool(self) -> ThreadPoolExecutor:
        """The pool that runs plain (sync) handlers, made on first use."""
        if self._pool is None:
            size = self.max_concurrency or 32
            self._pool = ThreadPoolExecutor(size, thread_name_prefix=f"pywork-{self.name}")
        return self._pool

    # performing ---------------------------------------------------------------
    def _check(self, job: Job) -> Handler:
        if not isinstance(job, Job):
            raise TypeError(f"expected a pywork.Job, got {job!r}")
        if self._state != _RUNNING:
            raise WorkerNotRunning(
                f"worker {self.name!r} is not running ({self._state}); "
                "await worker.start() or use 'async with worker' first"
            )
        chain = self._chains.get(job.handler)
        if chain is None:
            known = ", ".join(map(repr, self._handlers)) or "none"
            raise HandlerNotFound(
                f"no handler registered for {job.handler!r} (registered: {known})"
            )
        return chain

    def _launch(
        self, job: Job, chain: Handler, *, holds_slot: bool = False, attempt: int = 1
    ) -> Execution:
        job.ctx = execution = Execution(job, self, attempt, self._number)
        if holds_slot:
            execution._holds_slot = True
        execution._task = self._loop.create_task(self._run(execution, chain))
        self._executions.add(execution)
        return execution

    def _forget(self, execution: Execution) -> None:
        """Drop a finished (or never started) execution and free its slot."""
        self._executions.discard(execution)
        if execution._holds_slot:
            execution._holds_slot = False
            assert self._slots is not None
            self._slots.release()

    async def _run(self, execution: Execution, chain: Handler) -> None:
        ctx = execution
        slots = self._slots
        if slots is not None and not execution._holds_slot:
            try:
                await slots.acquire()
            except asyncio.CancelledError:
                ctx.cancelled = True
                ctx._status = _CANCELLED
                self._forget(execution)
                return
            execution._holds_slot = True
        self._active += 1
        try:
            t0 = execution._t0 = time.monotonic()
            job = execution.job
            if job.timeout is not None:
                ctx.deadline = t0 + job.timeout
            await chain(job)
        except asyncio.CancelledError as exc:
            if ctx._status is not _CANCELLED:
                ctx.cancelled = True
                ctx.error = exc
                ctx._status = _CANCELLED
        except Exception as exc:  # an adapter raised: recovered like a handler
            ctx.error = exc
            if isinstance(exc, JobError):
                ctx._status = exc.status
            else:
                ctx._status = Status.INTERNAL_ERROR
                log_failure(ctx, exc, "middleware around")
        finally:
            execution._t1 = time.monotonic()
            self._active -= 1
            self._forget(execution)

    async def perform(self, job: Job, *, wait: bool = False, attempt: int = 1) -> Execution:
        """Run `job` now; afterwards ``job.ctx`` is this execution's context.

        With ``wait=True`` return when it finished, else at once. Handler failures are
        never raised: read ``execution.status`` and ``execution.error``.

        Args:
            job: the job to run.
            wait: return once the execution finished.
            attempt: the run's ``ctx.attempt`` (1-based), for callers that redeliver
                work themselves, such as :meth:`consume_source`.

        Raises:
            TypeError: `job` is not a Job.
            ValueError: `attempt` < 1.
            WorkerNotRunning: the worker is not started or is stopped.
            HandlerNotFound: ``job.handler`` is not registered.
        """
        if attempt != 1:
            attempt = positive_int(attempt, "attempt")
        execution = self._launch(job, self._check(job), attempt=attempt)
        if wait:
            await _finished(execution)
        return execution

    async def perform_every(
        self, job: Job, interval: float | timedelta, *, wait: bool = False
    ) -> Schedule:
        """Run a copy of `job` at once, then every `interval` seconds on the monotonic clock.

        Tick k starts at ``start + k*interval`` (no cumulative drift). ``wait=False``
        starts each tick's run even while earlier runs go on (bounded by
        ``max_concurrency``); ``wait=True`` never overlaps and skips missed ticks.

        Raises:
            ValueError: `interval` <= 0. Also as :meth:`perform`.
        """
        chain = self._check(job)
        every = duration(interval, "interval", allow_zero=False)
        schedule = Schedule(job, self, chain)
        first = schedule._start_run(job.copy())
        self._drive(schedule, self._every(schedule, first, every, wait))
        return schedule

    async def perform_at(self, job: Job, when: datetime) -> Schedule:
        """Run `job` itself once at `when` (naive = local time; a past time runs at once).

        Raises:
            TypeError: `when` is not a datetime. Also as :meth:`perform`.
        """
        chain = self._check(job)
        if not isinstance(when, datetime):
            raise TypeError(f"when must be a datetime.datetime, got {when!r}")
        return self._timer(job, chain, max(0.0, when.timestamp() - time.time()))

    async def perform_in(self, job: Job, delay: float | timedelta) -> Schedule:
        """Run `job` itself once after `delay` seconds.

        Raises:
            ValueError: `delay` < 0. Also as :meth:`perform`.
        """
        chain = self._check(job)
        return self._timer(job, chain, duration(delay, "delay"))

    async def perform_receive(
        self,
        job: Job,
        source: Channel[Any] | AsyncIterable[Any] | Iterable[Any],
        *,
        wait: bool = False,
    ) -> Schedule:
        """For every value from `source`, run ``job.copy()`` with ``args["received_data"]``.

        `source` is a Channel, an async iterable or an iterable. ``wait=True`` finishes
        each run before receiving the next; ``wait=False`` runs them concurrently,
        bounded by ``max_concurrency`` (receiving pauses at the bound). The schedule is
        done when the source is exhausted and its runs have finished.

        Raises:
            TypeError: `source` is not iterable (or is a str/bytes). Also as :meth:`perform`.
        """
        chain = self._check(job)
        _check_source(source)
        schedule = Schedule(job, self, chain)
        self._drive(schedule, self._receive(schedule, source, wait))
        return schedule

    def schedule(
        self,
        name: str,
        job: Job,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        timezone: str = "UTC",
        jitter: float | timedelta = 0.0,
        misfire: str = "skip",
    ) -> None:
        """Declare a cluster schedule, applied to the broker when :meth:`consume` starts.

        Each :meth:`consume` call declares every recorded schedule with
        ``broker.schedule(...)`` before it takes any job. Declaring is idempotent: a
        schedule already stored with the same every/cron/timezone keeps its next run
        time, so every process of an app can declare the same schedules at startup and
        each tick still fires once across all of them. Declaring `name` again on this
        worker replaces the earlier declaration; declarations made while a consume is
        running apply at the next consume. Remove a schedule with
        ``broker.unschedule(name)``. See ``docs/schedules.md``.

        Args:
            name: the schedule's unique name in the broker (part of each fired job's key).
            job: the job each tick enqueues a copy of (new id, key ``f"{name}@{tick}"``).
            every: seconds (or a timedelta) between ticks; exclusive with `cron`.
            cron: a 5-field crontab read in `timezone`; exclusive with `every`.
            timezone: an IANA time zone name such as ``"Europe/Paris"``.
            jitter: delay each tick's job by a random 0..jitter seconds.
            misfire: when several ticks are due at once, ``"skip"`` fires the latest
                only, ``"all"`` the latest 100.

        Raises:
            TypeError: `name` is not a str, `job` is not a Job, or an option has the
                wrong type.
            ValueError: `name` is empty, or the timing is invalid (not exactly one of
                every/cron, ``every <= 0``, a bad crontab field, ``jitter < 0``, an
                unknown time zone, `misfire` not "skip" or "all").
            SerializationError: the job's args or headers cannot be encoded.
        """
        # refuses args a broker could not store now, rather than at consume
        spec, _ = declare(
            name, job, every=every, cron=cron, timezone=timezone, jitter=jitter, misfire=misfire
        )
        self._cluster_schedules[name] = (job.copy(), spec)

    async def consume(
        self,
        broker: Broker,
        *,
        queues: Sequence[str] = ("default",),
        concurrency: int | None = None,
        lease: float | timedelta = 30.0,
        max_retries: int = 3,
        backoff: tuple[float | timedelta, float | timedelta] = (1.0, 300.0),
    ) -> None:
        """Consume jobs from a durable `broker` until :meth:`stop` has completed.

        Starts the worker if it is not running. Jobs are delivered at least once: each is
        leased to this consumer, the lease is renewed while it runs, and a job whose
        consumer died is delivered again once its lease expires. Worker middleware
        applies. Returns without raising once ``worker.stop()`` completed; jobs leased
        but not started, and runs cut short by the stop, go back to the queue at once.
        See ``docs/brokers.md``.

        Every consumer also fires the broker's due cluster schedules (all of them,
        whatever `queues` it takes jobs from), after declaring those recorded with
        :meth:`schedule`; see ``docs/schedules.md``.

        Args:
            broker: from :func:`pywork.connect`.
            queues: the queue names to take jobs from (oldest job first).
            concurrency: the most consumed jobs running at once; default
                ``max_concurrency`` of the worker, else 100.
            lease: seconds a job stays leased without renewal (renewed every
                ``min(lease / 3, 0.5)`` s while it runs).
            max_retries: retries of a failed job (``job.max_retries`` overrides).
            backoff: ``(base, cap)``: retry ``n`` waits a random time in
                ``[0, min(cap, base * 2**(n-1))]`` (full jitter), or the error's ``retry_after``.

        Raises:
            TypeError, ValueError: an argument is invalid (checked before anything starts).
            Exception: the broker failed while declaring the schedules of :meth:`schedule`
                (nothing was consumed).
        """
        from pywork.consumer import Consumer

        consumer = Consumer(
            self,
            broker,
            queues=queues,
            concurrency=concurrency,
            lease=lease,
            max_retries=max_retries,
            backoff=backoff,
        )
        await consumer.run()

    async def consume_source(
        self,
        source: Source,
        job: Job,
        *,
        concurrency: int | None = None,
        max_retries: int = 3,
        backoff: tuple[float | timedelta, float | timedelta] = (1.0, 300.0),
    ) -> None:
        """Run ``job.copy()`` for every message of `source`, then settle it (contract §15).

        Each run gets ``args["received_data"] = message.data`` and ``ctx.attempt =
        message.attempt``; worker middleware applies. SUCCESS / NO_RESPONSE → ack; a
        retryable status → nack with the backoff until `max_retries` (``job.max_retries``
        overrides) is exhausted, then dead letter; any other 4xx → dead letter. Starts the
        worker if needed; returns once ``worker.stop()`` completed (runs cut short and
        messages taken but not started are nacked with delay 0) or the source is
        exhausted and every message taken is settled. Does not close `source`. See
        ``docs/sources.md``.

        Args:
            source: a :class:`pywork.sources.Source`, such as ``PulsarSource`` or ``S3Source``.
            job: the template job; its handler must be registered.
            concurrency: the most messages handled at once; default ``max_concurrency``
                of the worker, else 100.
            max_retries: retries of a failed message (``job.max_retries`` overrides).
            backoff: ``(base, cap)``: retry ``n`` waits a random time in
                ``[0, min(cap, base * 2**(n-1))]`` (full jitter), or the error's ``retry_after``.

        Raises:
            TypeError, ValueError: an argument is invalid (checked before anything starts).
            HandlerNotFound: ``job.handler`` is not registered.
        """
        from pywork.sources.consumer import SourceConsumer

        consumer = SourceConsumer(
            self, source, job, concurrency=concurrency, max_retries=max_retries, backoff=backoff
        )
        await consumer.run()

    # schedule drivers ---------------------------------------------------------
    def _timer(self, job: Job, chain: Handler, delay: float) -> Schedule:
        schedule = Schedule(job, self, chain)
        loop = asyncio.get_running_loop()
        schedule._timer = loop.call_at(loop.time() + delay, schedule._fire)
        self._schedules.add(schedule)
        return schedule

    def _drive(self, schedule: Schedule, driver: Any) -> None:
        task = asyncio.get_running_loop().create_task(driver)
        schedule._driver = task
        task.add_done_callback(schedule._intake_closed)
        self._schedules.add(schedule)

    async def _every(self, schedule: Schedule, first: Execution, every: float, wait: bool) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        execution = first
        while True:
            if wait:
                await _finished(execution)
            tick += 1
            now = loop.time()
            if wait and start + tick * every < now:  # missed ticks are skipped
                tick = math.floor((now - start) / every) + 1
            await asyncio.sleep(start + tick * every - now)
            execution = schedule._start_run(schedule.job.copy())

    async def _receive(
        self,
        schedule: Schedule,
        source: Channel[Any] | AsyncIterable[Any] | Iterable[Any],
        wait: bool,
    ) -> None:
        try:
            if isinstance(source, AsyncIterable):
                async for value in source:
                    await self._receive_one(schedule, value, wait)
            else:
                for count, value in enumerate(source, 1):
                    await self._receive_one(schedule, value, wait)
                    if count % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
        except Exception as exc:
            self.logger.error(
                "perform_receive source of %r raised %s: %s",
                schedule.job.handler,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    async def _receive_one(self, schedule: Schedule, value: Any, wait: bool) -> None:
        job = schedule.job.copy()
        job.args["received_data"] = value
        if wait:
            await _finished(schedule._start_run(job))
        elif self._slots is not None:
            await self._slots.acquire()
            try:
                schedule._start_run(job, holds_slot=True)
            except BaseException:
                self._slots.release()
                raise
        else:
            schedule._start_run(job)

    def __repr__(self) -> str:
        return (
            f"<Worker {self.name!r} {self._state} handlers={len(self._handlers)} "
            f"active={self._active}>"
        )


async def _finished(execution: Execution) -> None:
    """Wait for `execution`: neither cancels it nor passes its cancellation on."""
    task = execution._task
    if not task.done():
        await asyncio.wait((task,))


def check_handler_name(name: object) -> None:
    """Raise TypeError/ValueError unless `name` is a non-empty str."""
    if not isinstance(name, str):
        raise TypeError(f"handler name must be a str, got {name!r}")
    if not name:
        raise ValueError("handler name must be a non-empty str")


def _check_adapters(adapters: Sequence[object]) -> None:
    for adapter in adapters:
        if not callable(adapter):
            raise TypeError(
                f"an adapter must be a callable taking a handler and returning one, got {adapter!r}"
            )


def _check_source(source: object) -> None:
    if isinstance(source, str | bytes | bytearray) or not isinstance(
        source, Channel | AsyncIterable | Iterable
    ):
        raise TypeError(
            "source must be a pywork.Channel, an async iterable or an iterable "
            f"(not a str or bytes), got {source!r}"
        )


async def _shutdown_pool(pool: ThreadPoolExecutor, timeout: float, logger: Any) -> None:
    """Shut the thread pool down and wait up to `timeout` for its threads to end."""
    pool.shutdown(wait=False, cancel_futures=True)
    threads: list[threading.Thread] = list(getattr(pool, "_threads", ()))
    deadline = time.monotonic() + timeout
    while any(t.is_alive() for t in threads):
        if time.monotonic() >= deadline:
            names = [t.name for t in threads if t.is_alive()]
            logger.error(
                "plain handlers still running in threads %s after stop; "
                "poll job.ctx.cancelled to end them",
                names,
            )
            return
        await asyncio.sleep(0.005)
