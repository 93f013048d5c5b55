"""Worker: registers handlers, wraps them in middleware, performs jobs (go-work CommonWorker)."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections.abc import AsyncIterable, Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pywork._checks import check_adapters, check_handler_name, check_source
from pywork._durations import duration, optional_duration, positive_int
from pywork.channel import Channel
from pywork.cron import ScheduleSpec, declare
from pywork.errors import (
    HandlerAlreadyRegistered,
    HandlerNotFound,
    JobError,
    WorkerNotRunning,
    status_for,
)
from pywork.handler import log_failure, with_outcome
from pywork.job import Job
from pywork.schedule import Execution, Schedule
from pywork.status import Status
from pywork.task import Task, args_model_of, bind_args
from pywork.types import Adapter, Handler

if TYPE_CHECKING:
    from pywork.brokers.base import Broker
    from pywork.sources import Source

__all__ = ["Worker", "check_handler_name"]

F = TypeVar("F", bound=Callable[..., Any])

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
        check_adapters(middleware)
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
        self._tasks: dict[str, Task[Any]] = {}
        self._timeouts: dict[str, float] = {}  # the handlers' timeout options
        self._chains: dict[str, Handler] = {}
        self._state = _NEW
        self._stopping: asyncio.Future[None] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._threads: list[threading.Thread] = []  # of the pool, as they start
        self._executions: set[Execution] = set()
        self._schedules: set[Schedule] = set()
        self._active = 0
        self._number: int | None = None  # set by ConcurrentJob
        self._wall_offset = time.time() - time.monotonic()  # wall clock = monotonic + offset
        self._stop_hooks: list[Callable[[], None]] = []  # called when stop() begins (consumers)
        self._cluster_schedules: dict[str, tuple[Job, ScheduleSpec]] = {}  # applied by consume

    # registration -------------------------------------------------------------
    def register(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        queue: str | None = None,
        timeout: float | timedelta | None = None,
        max_retries: int | None = None,
        args: type | None = None,
    ) -> Task[Any]:
        """Register `handler` under `name` and return its :class:`~pywork.task.Task`.

        Args:
            name: the handler name jobs carry.
            handler: an async or plain function taking ``(job)``, or ``(job, args)`` with
                an args model (`args`, or the annotation of its second parameter).
            queue: the default queue of ``task.job()``.
            timeout: seconds a run may take when ``job.timeout`` is None.
            max_retries: durable retries when ``job.max_retries`` is None (beats the
                consumer's default).
            args: the args model: a ``msgspec.Struct``, dataclass, ``TypedDict`` or
                pydantic ``BaseModel`` class that ``job.args`` is converted into.

        Raises:
            TypeError: `name` is not a str, `handler` is not callable, a bad option type,
                or a ``(job, args)`` handler without a model.
            ValueError: `name` or `queue` empty, `timeout` <= 0, `max_retries` < 0.
            HandlerAlreadyRegistered: `name` is taken.
        """
        check_handler_name(name)
        if isinstance(handler, Task):
            handler = handler.fn
        if not callable(handler):
            raise TypeError(
                f"a handler must be an async or plain function taking a Job, got {handler!r}"
            )
        if queue is not None and (not isinstance(queue, str) or not queue):
            raise ValueError(f"queue must be None or a non-empty str, got {queue!r}")
        seconds = optional_duration(timeout, "timeout", allow_zero=False)
        if max_retries is not None:
            max_retries = positive_int(max_retries, "max_retries", minimum=0)
        if args is not None and not isinstance(args, type):
            raise TypeError(f"args must be a model class or None, got {args!r}")
        if name in self._handlers:
            raise HandlerAlreadyRegistered(f"a handler named {name!r} is already registered")
        model = args_model_of(handler, args, name)
        task = Task(
            handler, name, queue=queue, timeout=seconds, max_retries=max_retries, args=model
        )
        self._handlers[name] = with_outcome(handler if model is None else bind_args(handler, model))
        self._tasks[name] = task
        if seconds is not None:
            self._timeouts[name] = seconds
        if self._state == _RUNNING:
            self._chains[name] = self._compose(name)
        return task

    @overload
    def handler(self, name: F, /) -> Task[F]: ...
    @overload
    def handler(
        self,
        name: str | None = None,
        *,
        queue: str | None = None,
        timeout: float | timedelta | None = None,
        max_retries: int | None = None,
        args: type | None = None,
    ) -> Callable[[F], Task[F]]: ...

    def handler(
        self,
        name: str | F | None = None,
        *,
        queue: str | None = None,
        timeout: float | timedelta | None = None,
        max_retries: int | None = None,
        args: type | None = None,
    ) -> Task[F] | Callable[[F], Task[F]]:
        """Decorator registering a function under `name` (default: its ``__name__``) with
        the options of :meth:`register`; it returns the function's
        :class:`~pywork.task.Task` (calling the task calls the function).

        ``@worker.handler``, ``@worker.handler("email.send")`` and
        ``@worker.handler("email.send", queue="mail", timeout=10, args=Email)`` all work.
        """
        if callable(name):
            func = name
            return self.register(func.__name__, func)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"handler name must be a str or None, got {name!r}")

        def decorator(func: F) -> Task[F]:
            return self.register(
                name or func.__name__,
                func,
                queue=queue,
                timeout=timeout,
                max_retries=max_retries,
                args=args,
            )

        return decorator

    def task(self, name: str) -> Task[Any]:
        """The :class:`~pywork.task.Task` registered under `name` (its options).

        Raises:
            HandlerNotFound: `name` is not registered.
        """
        task = self._tasks.get(name)
        if task is None:
            raise HandlerNotFound(f"no handler registered for {name!r}")
        return task

    def timeout_for(self, handler: str) -> float | None:
        """The `timeout` option of `handler` (applies when the job has none), or None.

        Internal: the outcome rules read it for the error of a timed-out run.
        """
        return self._timeouts.get(handler)

    def max_retries_for(self, handler: str) -> int | None:
        """The `max_retries` option of `handler`, or None. Internal: read by the consumer."""
        task = self._tasks.get(handler)
        return None if task is None else task.max_retries

    def use(self, *adapters: Adapter) -> None:
        """Add worker-wide middleware (outermost last). Only before :meth:`start`.

        Raises:
            RuntimeError: the worker was started.
            TypeError: an adapter is not callable.
        """
        if self._state != _NEW:
            raise RuntimeError("Worker.use() must be called before the worker starts")
        check_adapters(adapters)
        self._middleware.extend(adapters)

    @property
    def middleware(self) -> tuple[Adapter, ...]:
        """The worker-wide adapters, innermost first (as given and added with :meth:`use`)."""
        return tuple(self._middleware)

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
        # every schedule is cancelled (contract §16); its runs get the grace period
        drivers = [d for s in list(self._schedules) if (d := s.cancel_at_stop()) is not None]
        if drivers:
            await asyncio.gather(*drivers, return_exceptions=True)
        tasks = {execution.task for execution in self._executions}
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
            grace = max(1.0, deadline - time.monotonic())
            await _shutdown_pool(pool, list(self._threads), grace, self.logger)

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
        self.add_stop_hook(callback)
        return functools.partial(self.remove_stop_hook, callback)

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

    # internal API (used by Schedule, Execution, Consumer, ConcurrentJob, the CLI) ----
    def thread_pool(self) -> ThreadPoolExecutor:
        """The pool that runs plain (sync) handlers, made on first use.

        Internal: the outcome rules run plain handlers in it.
        """
        if self._pool is None:
            size = self.max_concurrency or 32
            self._threads = threads = []
            self._pool = ThreadPoolExecutor(
                size,
                thread_name_prefix=f"pywork-{self.name}",
                initializer=lambda: threads.append(threading.current_thread()),
            )
        return self._pool

    @property
    def wall_offset(self) -> float:
        """Seconds to add to a ``time.monotonic()`` reading to get ``time.time()``.

        Internal: Executions turn their monotonic start time into ``started_at`` with it.
        """
        return self._wall_offset

    @property
    def executions(self) -> list[Execution]:
        """The executions not finished yet (running or waiting for a slot), a snapshot.

        Internal: the CLI cancels them on a second SIGINT.
        """
        return list(self._executions)

    @property
    def cluster_schedules(self) -> dict[str, tuple[Job, ScheduleSpec]]:
        """The cluster schedules declared with :meth:`schedule`, by name (a copy).

        Internal: :meth:`consume` declares them to the broker.
        """
        return dict(self._cluster_schedules)

    def chain_for(self, handler: str) -> Handler | None:
        """The middleware chain of the handler named `handler`, or None.

        Internal: the consumer checks and runs durable jobs with it. Chains exist
        while the worker runs (they are composed by :meth:`start`).
        """
        return self._chains.get(handler)

    def add_stop_hook(self, hook: Callable[[], None]) -> None:
        """Call `hook` when :meth:`stop` begins. Internal: consumers stop claiming."""
        self._stop_hooks.append(hook)

    def remove_stop_hook(self, hook: Callable[[], None]) -> None:
        """Undo :meth:`add_stop_hook` (nothing happens if `hook` is not added)."""
        if hook in self._stop_hooks:
            self._stop_hooks.remove(hook)

    async def wait_stopped(self) -> None:
        """Wait until a :meth:`stop` that has begun has completed (at once if none began).

        Internal: a consumer returns only once the worker's stop completed. Cancelling
        the waiter does not cancel the stop.
        """
        if self._stopping is not None:
            await asyncio.shield(self._stopping)

    def assign_number(self, number: int) -> None:
        """Number this worker (1-based): its contexts carry it as ``ctx.worker_number``.

        Internal: ConcurrentJob numbers the workers it starts.
        """
        self._number = number

    def schedule_finished(self, schedule: Schedule) -> None:
        """`schedule` is done: :meth:`stop` no longer needs to stop it.

        Internal: called by the Schedule itself.
        """
        self._schedules.discard(schedule)

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

    def launch(
        self, job: Job, chain: Handler, *, holds_slot: bool = False, attempt: int = 1
    ) -> Execution:
        """Start running `job` through `chain` now (``job.ctx`` becomes its Execution).

        Internal: :meth:`perform`, the schedules and the consumer call it after their
        checks. It does not check that the worker runs.

        Args:
            job: the job to run.
            chain: the handler's middleware chain (see :meth:`chain_for`).
            holds_slot: the caller already acquired a ``max_concurrency`` slot for it.
            attempt: ``ctx.attempt`` (durable retries count up).
        """
        job.ctx = execution = Execution(job, self, attempt, self._number)
        if holds_slot:
            execution.holds_slot = True
        execution.task = self._loop.create_task(self._run(execution, chain))
        self._executions.add(execution)
        return execution

    def forget(self, execution: Execution) -> None:
        """Drop a finished (or never started) execution and free its slot.

        Internal: the worker calls it when a run ends, an Execution when it is
        cancelled before it started.
        """
        self._executions.discard(execution)
        if execution.holds_slot:
            execution.holds_slot = False
            assert self._slots is not None
            self._slots.release()

    async def _run(self, execution: Execution, chain: Handler) -> None:
        ctx = execution
        slots = self._slots
        if slots is not None and not execution.holds_slot:
            try:
                await slots.acquire()
            except asyncio.CancelledError:
                ctx.set_outcome(_CANCELLED, cancelled=True)
                self.forget(execution)
                return
            execution.holds_slot = True
        self._active += 1
        try:
            t0 = execution.t_start = time.monotonic()
            job = execution.job
            timeout = job.timeout
            if timeout is None and self._timeouts:
                timeout = self._timeouts.get(job.handler)
            if timeout is not None:
                ctx.deadline = t0 + timeout
            await chain(job)
        except asyncio.CancelledError as exc:
            if ctx.status is not _CANCELLED:
                ctx.set_outcome(_CANCELLED, exc, cancelled=True)
        except Exception as exc:  # an adapter raised: recovered like a handler
            ctx.set_outcome(status_for(exc), exc)
            if not isinstance(exc, JobError):
                log_failure(ctx, exc, "middleware around")
        finally:
            execution.t_end = time.monotonic()
            self._active -= 1
            self.forget(execution)

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
        execution = self.launch(job, self._check(job), attempt=attempt)
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
        first = schedule.start_run(job.copy())
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
        check_source(source)
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
        schedule.arm(delay)
        self._schedules.add(schedule)
        return schedule

    def _drive(self, schedule: Schedule, driver: Coroutine[Any, Any, None]) -> None:
        schedule.drive(driver)
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
            execution = schedule.start_run(schedule.job.copy())

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
            await _finished(schedule.start_run(job))
        elif self._slots is not None:
            await self._slots.acquire()
            try:
                schedule.start_run(job, holds_slot=True)
            except BaseException:
                self._slots.release()
                raise
        else:
            schedule.start_run(job)

    def __repr__(self) -> str:
        return (
            f"<Worker {self.name!r} {self._state} handlers={len(self._handlers)} "
            f"active={self._active}>"
        )


async def _finished(execution: Execution) -> None:
    """Wait for `execution`: neither cancels it nor passes its cancellation on."""
    task = execution.task
    if not task.done():
        await asyncio.wait((task,))


async def _shutdown_pool(
    pool: ThreadPoolExecutor, threads: list[threading.Thread], timeout: float, logger: Any
) -> None:
    """Shut the thread pool down and wait up to `timeout` for its `threads` to end."""
    pool.shutdown(wait=False, cancel_futures=True)
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
