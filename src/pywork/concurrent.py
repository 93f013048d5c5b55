"""ConcurrentJob: up to N workers performing one job, started one by one (the on-ramp)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from datetime import timedelta
from enum import Enum
from types import TracebackType
from typing import Any, TypeVar

from pywork._checks import check_handler_name, check_source
from pywork._durations import duration, optional_duration, positive_int
from pywork.channel import Channel
from pywork.errors import HandlerAlreadyRegistered, HandlerNotFound, WorkerNotRunning
from pywork.handler import with_outcome
from pywork.job import Job
from pywork.types import AnyHandler
from pywork.worker import Worker

__all__ = ["ConcurrentJob", "PerformWith"]

H = TypeVar("H", bound=AnyHandler)


class PerformWith(Enum):
    """How each worker of a ConcurrentJob performs the job (``*_SYNC`` = wait for each run)."""

    SYNC = "sync"
    ASYNC = "async"
    EVERY_SYNC = "every_sync"
    EVERY_ASYNC = "every_async"
    RECEIVE_SYNC = "receive_sync"
    RECEIVE_ASYNC = "receive_async"

    @property
    def waits(self) -> bool:
        """True for the ``*_SYNC`` modes (each run finishes before the next starts)."""
        return self in _WAITING


_WAITING = frozenset({PerformWith.SYNC, PerformWith.EVERY_SYNC, PerformWith.RECEIVE_SYNC})
_EVERY = (PerformWith.EVERY_SYNC, PerformWith.EVERY_ASYNC)
_RECEIVE = (PerformWith.RECEIVE_SYNC, PerformWith.RECEIVE_ASYNC)


class _SharedAsyncIterator:
    """One async iterator shared by several consumers: each value goes to one of them."""

    def __init__(self, source: AsyncIterable[Any]) -> None:
        self._iterator: AsyncIterator[Any] = aiter(source)
        self._lock = asyncio.Lock()

    def __aiter__(self) -> _SharedAsyncIterator:
        return self

    async def __anext__(self) -> Any:
        async with self._lock:
            return await anext(self._iterator)


class ConcurrentJob:
    """Runs `job` on up to `max_workers` workers, one more every `start_interval` seconds.

    Each worker (numbered 1..N, ``ctx.worker_number``) performs the job as
    `perform_with` says; a worker whose work ends is replaced after `start_interval`
    while the ConcurrentJob runs (the polling pattern), except in RECEIVE modes, where
    the exhausted source ends everything.

    Raises:
        TypeError, ValueError: an argument is invalid (``max_workers < 1``, EVERY_*
            without `perform_every`, RECEIVE_* without `source`, ...).
    """

    def __init__(
        self,
        job: Job,
        *,
        worker_factory: Callable[[], Worker] = Worker,
        perform_with: PerformWith = PerformWith.SYNC,
        perform_every: float | timedelta | None = None,
        max_workers: int = 1,
        start_interval: float | timedelta = 0.0,
        source: Channel[Any] | AsyncIterable[Any] | Iterable[Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not isinstance(job, Job):
            raise TypeError(f"job must be a pywork.Job, got {job!r}")
        if not callable(worker_factory):
            raise TypeError(
                f"worker_factory must be a callable returning a Worker, got {worker_factory!r}"
            )
        if not isinstance(perform_with, PerformWith):
            raise TypeError(
                f"perform_with must be a pywork.PerformWith member, got {perform_with!r}"
            )
        self.max_workers = positive_int(max_workers, "max_workers")
        self.start_interval = duration(start_interval, "start_interval")
        self.perform_every = optional_duration(perform_every, "perform_every", allow_zero=False)
        if perform_with in _EVERY and self.perform_every is None:
            raise ValueError(f"perform_with={perform_with.name} needs perform_every (seconds > 0)")
        if perform_with in _RECEIVE:
            if source is None:
                raise ValueError(f"perform_with={perform_with.name} needs a source to receive from")
            check_source(source)
        if logger is not None and not isinstance(logger, logging.Logger):
            raise TypeError(f"logger must be a logging.Logger, got {logger!r}")
        self.job = job
        self.perform_with = perform_with
        self.logger = logger or logging.getLogger("pywork")
        self._factory = worker_factory
        self._source = source
        self._handlers: dict[str, AnyHandler] = {}
        self._workers: list[Worker] = []
        self._slots: set[asyncio.Task[None]] = set()
        self._ramp: asyncio.Task[None] | None = None
        self._busy = 0
        self._exhausted = False
        self._running = False
        self._finished: asyncio.Event | None = None

    # registration -------------------------------------------------------------
    def register(self, name: str, handler: AnyHandler) -> None:
        """Register `handler` under `name` on every worker (see :meth:`Worker.register`)."""
        check_handler_name(name)
        if name in self._handlers:
            raise HandlerAlreadyRegistered(f"a handler named {name!r} is already registered")
        with_outcome(handler)  # validates it now rather than when a worker starts
        self._handlers[name] = handler
        for worker in self._workers:
            worker.register(name, handler)

    def handler(self, name: str | None = None) -> Callable[[H], H]:
        """Decorator registering a function under `name` (default: its ``__name__``)."""

        def decorator(func: H) -> H:
            self.register(name or func.__name__, func)
            return func

        return decorator

    # lifecycle ----------------------------------------------------------------
    @property
    def running_workers(self) -> int:
        """Workers currently doing their work."""
        return self._busy

    @property
    def workers(self) -> list[Worker]:
        """The workers started so far, worker number i at index i-1."""
        return list(self._workers)

    async def start(self) -> None:
        """Start worker 1 and the on-ramp; returns once ramp-up has begun.

        Raises:
            HandlerNotFound: ``job.handler`` is registered neither here nor by the factory.
        """
        if self._running:
            return
        first = self._new_worker()
        if self.job.handler not in first:
            self._workers.clear()
            raise HandlerNotFound(
                f"ConcurrentJob job handler {self.job.handler!r} is not registered; "
                "use cj.register() or a worker_factory whose workers know it"
            )
        source = self._source
        if isinstance(source, AsyncIterable) and not isinstance(source, Channel):
            source = _SharedAsyncIterator(source)
        elif source is not None and not isinstance(source, Channel):
            source = iter(source)
        self._shared_source: Channel[Any] | AsyncIterable[Any] | Iterable[Any] = source or ()
        self._running = True
        self._finished = asyncio.Event()
        await first.start()
        self._spawn(first)
        if self.max_workers > 1:
            self._ramp = asyncio.get_running_loop().create_task(self._ramp_up())
            self._ramp.add_done_callback(self._ramp_done)

    async def stop(self, timeout: float | timedelta = 30.0) -> None:
        """Stop every worker (see :meth:`Worker.stop`) and the on-ramp. Idempotent."""
        grace = duration(timeout, "timeout")
        self._running = False
        if self._ramp is not None:
            self._ramp.cancel()
            await asyncio.gather(self._ramp, return_exceptions=True)
            self._ramp = None
        await asyncio.gather(*(w.stop(grace) for w in self._workers))
        slots = list(self._slots)
        for task in slots:
            task.cancel()
        await asyncio.gather(*slots, return_exceptions=True)
        if self._finished is not None:
            self._finished.set()

    async def run(self) -> None:
        """Start, wait for SIGINT/SIGTERM, :meth:`stop` or an exhausted RECEIVE source,
        then stop. The previous signal handlers are restored on exit."""
        loop = asyncio.get_running_loop()
        await self.start()
        assert self._finished is not None
        finished = self._finished
        restore = _install_signal_handlers(loop, finished.set, self.logger)
        try:
            await finished.wait()
        finally:
            restore()
            await self.stop()

    async def __aenter__(self) -> ConcurrentJob:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # internals ----------------------------------------------------------------
    def _new_worker(self) -> Worker:
        worker = self._factory()
        if not isinstance(worker, Worker):
            raise TypeError(f"worker_factory must return a pywork.Worker, got {worker!r}")
        if any(worker is w for w in self._workers):
            raise ValueError("worker_factory must return a new Worker on each call")
        for name, handler in self._handlers.items():
            if name not in worker:
                worker.register(name, handler)
        self._workers.append(worker)
        worker.assign_number(len(self._workers))
        return worker

    def _spawn(self, worker: Worker) -> None:
        task = asyncio.get_running_loop().create_task(self._slot(worker))
        self._slots.add(task)
        task.add_done_callback(self._slot_done)

    async def _ramp_up(self) -> None:
        while len(self._workers) < self.max_workers:
            await asyncio.sleep(self.start_interval)
            if not self._running or self._exhausted:
                self._finish_if_exhausted()
                return
            worker = self._new_worker()
            await worker.start()
            self._spawn(worker)

    async def _slot(self, worker: Worker) -> None:
        while self._running:
            self._busy += 1
            try:
                await self._work(worker)
            except WorkerNotRunning:
                return
            finally:
                self._busy -= 1
            if self.perform_with in _RECEIVE:
                self._exhausted = self._running
                if self._exhausted and self._ramp is not None:
                    self._ramp.cancel()  # the source is exhausted: start no more workers
                return
            await asyncio.sleep(self.start_interval)

    async def _work(self, worker: Worker) -> None:
        mode = self.perform_with
        if mode is PerformWith.SYNC:
            await worker.perform(self.job.copy(), wait=True)
        elif mode is PerformWith.ASYNC:
            await (await worker.perform(self.job.copy()))
        elif mode in _EVERY:
            assert self.perform_every is not None
            await (await worker.perform_every(self.job.copy(), self.perform_every, wait=mode.waits))
        else:
            await (await worker.perform_receive(self.job, self._shared_source, wait=mode.waits))

    def _slot_done(self, task: asyncio.Task[None]) -> None:
        self._slots.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.logger.error("ConcurrentJob worker failed", exc_info=task.exception())
        if self._ramp is None or self._ramp.done():
            self._finish_if_exhausted()

    def _ramp_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.logger.error("ConcurrentJob on-ramp failed", exc_info=task.exception())
        self._finish_if_exhausted()

    def _finish_if_exhausted(self) -> None:
        if self._exhausted and not self._slots and self._finished is not None:
            self._finished.set()  # the RECEIVE source is exhausted: run() returns

    def __repr__(self) -> str:
        return (
            f"<ConcurrentJob {self.job.handler!r} {self.perform_with.name} "
            f"workers={len(self._workers)}/{self.max_workers} running={self._busy}>"
        )


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, callback: Callable[[], None], logger: logging.Logger
) -> Callable[[], None]:
    """Route SIGINT/SIGTERM to `callback`; return a function restoring the previous handlers."""
    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old = signal.getsignal(sig)
            loop.add_signal_handler(sig, callback)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
            logger.debug("cannot install a handler for %s here; stop() ends run()", sig.name)
            continue
        previous[sig] = old

    def restore() -> None:
        for sig, old in previous.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    return restore
