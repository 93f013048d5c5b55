"""Execution and Schedule: the handles returned by the Worker's perform methods."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pywork._durations import optional_duration
from pywork.job import Context, Job
from pywork.status import Status

if TYPE_CHECKING:
    from pywork.types import Handler
    from pywork.worker import Worker

__all__ = ["Execution", "Schedule"]


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
    """

    __slots__ = ("_holds_slot", "_t0", "_t1", "_task")

    def __init__(
        self, job: Job, worker: Worker, attempt: int = 1, worker_number: int | None = None
    ) -> None:
        Context.__init__(self, job, worker, attempt, worker_number)
        self._task: asyncio.Task[None] = None  # type: ignore[assignment]  # set by the worker
        self._holds_slot = False
        self._t0: float | None = None
        self._t1: float | None = None

    @property
    def ctx(self) -> Context:
        """The run's Context (this same object)."""
        return self

    @property
    def started_at(self) -> datetime | None:
        """When the handler chain started (aware, UTC), or None before."""
        if self._t0 is None:
            return None
        assert self.worker is not None
        return datetime.fromtimestamp(self.worker._wall_offset + self._t0, UTC)

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
        if self._t0 is None or self._t1 is None:
            return None
        return self._t1 - self._t0

    def done(self) -> bool:
        """True once the execution finished (whatever its status)."""
        return self._task.done()

    def cancel(self) -> bool:
        """Cancel the execution; its status becomes CANCELLED. False once done."""
        if self._task.done():
            return False
        if self._t0 is None:  # not started: the task may never run its body
            self.cancelled = True
            self._status = Status.CANCELLED
            assert self.worker is not None
            self.worker._forget(self)
        self._task.cancel()
        return True

    async def wait(self, timeout: float | timedelta | None = None) -> Status:
        """Wait until the execution finished and return its status.

        Raises:
            TimeoutError: not finished within `timeout` seconds (it is not cancelled).
        """
        await _wait_for(self._task, optional_duration(timeout, "timeout"))
        return self._status

    def __await__(self) -> Generator[Any, None, Status]:
        if not self._task.done():
            yield from asyncio.wait((self._task,)).__await__()
        return self._status

    def __repr__(self) -> str:
        state = "done" if self._task is not None and self._task.done() else "pending"
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

    def __init__(self, job: Job, worker: Worker, chain: Handler) -> None:
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

    # driven by the worker -----------------------------------------------------
    def _start_run(self, job: Job, *, holds_slot: bool = False) -> Execution:
        execution = self._worker._launch(job, self._chain, holds_slot=holds_slot)
        self.runs += 1
        self.last = execution
        if self._inflight is None:
            self._inflight = {}
        self._inflight[execution._task] = execution
        execution._task.add_done_callback(self._run_finished)
        return execution

    def _fire(self) -> None:
        """Timer callback of perform_at / perform_in: one run of the job itself."""
        self._timer = None
        if self._worker.running:
            self._start_run(self.job)
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
        self._worker._schedules.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __repr__(self) -> str:
        state = "done" if self._done else ("cancelled" if self.cancelled else "active")
        return f"<Schedule {self.job.handler!r} {state} runs={self.runs}>"
