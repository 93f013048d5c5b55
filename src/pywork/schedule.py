"""Execution and Schedule: the handles returned by the Worker's perform methods."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from pywork._durations import optional_duration
from pywork.job import Context, Job, WorkerLike
from pywork.status import Status

if TYPE_CHECKING:
    from pywork.types import Handler

__all__ = ["Execution", "Runner", "Schedule"]


class Runner(WorkerLike, Protocol):
    """What Executions and Schedules need of the worker that made them (a :class:`pywork.Worker`).

    The internal API between this module and the worker, a Protocol so that this
    module does not import the worker module. Not for users.
    """

    @property
    def wall_offset(self) -> float:
        """Seconds to add to a ``time.monotonic()`` reading to get wall-clock time."""
        ...

    def launch(
        self, job: Job, chain: Handler, *, holds_slot: bool = False, attempt: int = 1
    ) -> Execution:
        """Start running `job` through `chain` now; return its Execution."""
        ...

    def forget(self, execution: Execution) -> None:
        """Drop an execution that finished or will never start, and free its slot."""
        ...

    def schedule_finished(self, schedule: Schedule) -> None:
        """`schedule` is done: the worker no longer needs to stop it."""
        ...


async def _wait_for(fut: asyncio.Future[Any], timeout: float | None) -> None:
    """Wait for `fut` without cancelling it, up to `timeout` (TimeoutError after).

    ``asyncio.wait`` rather than ``shield``: an execution cancelled before its first
    step ends as a cancelled task, which must not raise CancelledError in the waiter.
    """
    if fut.done():
        return
    done, _ = await asyncio.wait((fut,), timeout=timeout)
    if not done:
        raise TimeoutError(f"not finished within {timeout:g}s")


class Execution(Context):
    """One run of one job: its context, status, timing, and a way to wait or cancel.

    ``await execution`` (or :meth:`wait`) returns the final Status; handler failures
    are never raised, read :attr:`status` and :attr:`error`. An Execution is also the
    run's :class:`~pywork.Context` (``execution.ctx is execution is job.ctx``): one
    object per run instead of two, on the hottest path of the worker.

    Internal attributes, written by the worker that runs it (not for users): `task`
    (the asyncio task of the run), `holds_slot` (it holds one of the worker's
    ``max_concurrency`` slots), `t_start` and `t_end` (``time.monotonic()`` when the
    handler chain started and when the run ended, or None).
    """

    __slots__ = ("holds_slot", "t_end", "t_start", "task")

    worker: Runner

    def __init__(
        self, job: Job, worker: Runner, attempt: int = 1, worker_number: int | None = None
    ) -> None:
        Context.__init__(self, job, worker, attempt, worker_number)
        self.task: asyncio.Task[None] = None  # type: ignore[assignment]  # set by the worker
        self.holds_slot = False
        self.t_start: float | None = None
        self.t_end: float | None = None

    @property
    def ctx(self) -> Context:
        """The run's Context (this same object)."""
        return self

    @property
    def started_at(self) -> datetime | None:
        """When the handler chain started (aware, UTC), or None before."""
        if self.t_start is None:
            return None
        return datetime.fromtimestamp(self.worker.wall_offset + self.t_start, UTC)

    @property
    def finished_at(self) -> datetime | None:
        """When the execution finished (aware, UTC), or None before."""
        started, took = self.started_at, self.duration
        if started is None or took is None:
            return None
        return started + timedelta(seconds=took)

    @property
    def duration(self) -> float | None:
        """Seconds the execution took, or None until it finished."""
        if self.t_start is None or self.t_end is None:
            return None
        return self.t_end - self.t_start

    def done(self) -> bool:
        """True once the execution finished (whatever its status)."""
        return self.task.done()

    def cancel(self) -> bool:
        """Cancel the execution; its status becomes CANCELLED. False once done."""
        if self.task.done():
            return False
        if self.t_start is None:  # not started: the task may never run its body
            self.cancelled = True
            self._status = Status.CANCELLED
            self.worker.forget(self)
        self.task.cancel()
        return True

    async def wait(self, timeout: float | timedelta | None = None) -> Status:
        """Wait until the execution finished and return its status.

        Raises:
            TimeoutError: not finished within `timeout` seconds (it is not cancelled).
        """
        await _wait_for(self.task, optional_duration(timeout, "timeout"))
        return self._status

    def __await__(self) -> Generator[Any, None, Status]:
        if not self.task.done():
            yield from asyncio.wait((self.task,)).__await__()
        return self._status

    def __repr__(self) -> str:
        state = "done" if self.task is not None and self.task.done() else "pending"
        return (
            f"<Execution {self.job.handler!r} id={self.job.id} {state} status={self._status.name}>"
        )


class Schedule:
    """Runs a job later or repeatedly; returned by ``perform_every/at/in/receive``.

    ``await schedule`` (or :meth:`wait`) returns once no more runs will start and the
    runs it started have finished. :meth:`cancel` stops future runs and cancels the
    running ones.
    """

    __slots__ = (
        "_chain",
        "_done",
        "_driver",
        "_inflight",
        "_intake_open",
        "_timer",
        "_waiter",
        "_worker",
        "cancelled",
        "job",
        "last",
        "runs",
    )

    def __init__(self, job: Job, worker: Runner, chain: Handler) -> None:
        self.job = job
        self.runs = 0
        self.last: Execution | None = None
        self.cancelled = False
        self._worker = worker
        self._chain = chain
        self._timer: asyncio.TimerHandle | None = None
        self._driver: asyncio.Task[None] | None = None
        self._inflight: dict[asyncio.Task[None], Execution] | None = None
        self._intake_open = True
        self._done = False
        self._waiter: asyncio.Future[None] | None = None

    def done(self) -> bool:
        """True once no more runs will start and all runs have finished."""
        return self._done

    def cancel(self) -> bool:
        """Stop future runs and cancel running ones. False if already done or cancelled."""
        if self._done or self.cancelled:
            return False
        self.cancelled = True
        if self._inflight:
            for execution in list(self._inflight.values()):
                execution.cancel()
        self._close_intake()
        return True

    async def wait(self, timeout: float | timedelta | None = None) -> None:
        """Wait until the schedule is done.

        Raises:
            TimeoutError: not done within `timeout` seconds (it is not cancelled).
        """
        if self._done:
            return
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await _wait_for(self._waiter, optional_duration(timeout, "timeout"))

    def __await__(self) -> Generator[Any, None, None]:
        return self.wait().__await__()

    # driven by the worker (internal API, not for users) ----------------------
    def start_run(self, job: Job, *, holds_slot: bool = False) -> Execution:
        """Start one run of `job` (the job itself or a copy) and track it.

        Internal: the worker's schedule drivers call it.
        """
        execution = self._worker.launch(job, self._chain, holds_slot=holds_slot)
        self.runs += 1
        self.last = execution
        if self._inflight is None:
            self._inflight = {}
        self._inflight[execution.task] = execution
        execution.task.add_done_callback(self._run_finished)
        return execution

    def arm(self, delay: float) -> None:
        """Run the job itself once, `delay` seconds from now (perform_at / perform_in).

        Internal: called once by the worker, right after making the schedule.
        """
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + delay, self._fire)

    def drive(self, driver: Coroutine[Any, Any, None]) -> None:
        """Run `driver` (the loop of perform_every / perform_receive that calls
        :meth:`start_run`) as this schedule's task; the intake closes when it ends.

        Internal: called once by the worker, right after making the schedule.
        """
        task = asyncio.get_running_loop().create_task(driver)
        self._driver = task
        task.add_done_callback(self._intake_closed)

    def cancel_at_stop(self) -> asyncio.Task[None] | None:
        """Mark the schedule cancelled and start no more runs; the runs in progress go
        on (the worker gives them its grace period, then cancels them).

        Internal: :meth:`Worker.stop <pywork.Worker.stop>` calls it (contract §16).

        Returns:
            The driver task, still ending, for the worker to await; or None.
        """
        if not self._done:
            self.cancelled = True
        self._close_intake()
        driver = self._driver
        return driver if driver is not None and not driver.done() else None

    def _fire(self) -> None:
        """Timer callback of perform_at / perform_in: one run of the job itself."""
        self._timer = None
        if self._worker.running:
            self.start_run(self.job)
        self._intake_closed()

    def _run_finished(self, task: asyncio.Task[None]) -> None:
        assert self._inflight is not None
        self._inflight.pop(task, None)
        if not self._intake_open and not self._inflight:
            self._finish()

    def _close_intake(self) -> None:
        """Start no more runs (runs in progress go on)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._driver is not None and not self._driver.done():
            self._driver.cancel()  # its done callback closes the intake
        else:
            self._intake_closed()

    def _intake_closed(self, _: object = None) -> None:
        self._intake_open = False
        if not self._inflight:
            self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._worker.schedule_finished(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __repr__(self) -> str:
        state = "done" if self._done else ("cancelled" if self.cancelled else "active")
        return f"<Schedule {self.job.handler!r} {state} runs={self.runs}>"
