"""``adapt`` and the outcome rules that turn a handler's return or exception into a Status."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from typing import Any, cast

from pywork.errors import InvalidArgs, JobError, JobTimeout, status_for
from pywork.job import Context, Job
from pywork.status import Status
from pywork.types import Adapter, AnyHandler, Handler

__all__ = ["adapt", "is_async_handler", "with_outcome"]

_ADAPTED = "__pywork_adapted__"
_TIMEOUT = Status.TIMEOUT
_CANCELLED = Status.CANCELLED


def is_async_handler(handler: object) -> bool:
    """True when calling `handler` returns an awaitable to run on the event loop."""
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - we want the method itself
    return inspect.iscoroutinefunction(call)


def with_outcome(handler: AnyHandler) -> Handler:
    """Wrap a user handler with the outcome rules (the innermost layer of every chain).

    - returns with status UNKNOWN → SUCCESS; a status the handler set is kept; the
      returned value is the run's result (``ctx.result``);
    - raises JobError → its status, InvalidArgs → BAD_REQUEST; anything else →
      INTERNAL_ERROR, logged with its traceback;
    - exceeds ``job.timeout`` → TIMEOUT; cancelled → CANCELLED (and re-raised).

    A plain function runs in the worker's thread pool. A handler already wrapped
    (by this function or by :func:`adapt`) is returned as it is.

    Raises:
        TypeError: `handler` is not callable.
    """
    if getattr(handler, _ADAPTED, False):
        return cast(Handler, handler)
    if not callable(handler):
        raise TypeError(
            f"a handler must be an async or plain function taking a Job, got {handler!r}"
        )
    wrapped = _async_outcome(handler) if is_async_handler(handler) else _sync_outcome(handler)
    _mark(wrapped)
    return wrapped


def adapt(handler: AnyHandler, *adapters: Adapter) -> Handler:
    """Wrap `handler` in `adapters`: ``adapt(h, a1, a2)`` is ``a2(a1(h))``.

    The last adapter is outermost and runs first, as go-work's ``Adapt``. The outcome
    rules wrap `handler` itself, so every adapter sees the final status when the inner
    call returns. Plain (sync) handlers are accepted; adapters always receive an async one.

    Raises:
        TypeError: `handler` or an adapter is not callable, or an adapter returned
            something that is not a handler.
    """
    chain = with_outcome(handler)
    for adapter in adapters:
        if not callable(adapter):
            raise TypeError(
                f"an adapter must be a callable taking a handler and returning one, got {adapter!r}"
            )
        chain = adapter(chain)
        if not callable(chain):
            raise TypeError(f"adapter {adapter!r} returned {chain!r}, expected a handler")
    _mark(chain)
    return chain


def _mark(handler: object) -> None:
    try:
        setattr(handler, _ADAPTED, True)
    except (AttributeError, TypeError):
        pass  # bound methods and some callables take no attributes: wrapped again, harmlessly


def _context(job: Job) -> Context:
    ctx = job.ctx
    if ctx is None:  # called directly, outside a worker (tests, scripts)
        ctx = job.ctx = Context(job)
    return ctx


def log_failure(ctx: Context, exc: BaseException, what: str) -> None:
    """Log an unhandled exception once, with its traceback, on the worker's logger."""
    job = ctx.job
    logger = ctx.worker.logger if ctx.worker is not None else logging.getLogger("pywork")
    logger.error(
        "%s %s (job %s) raised %s: %s",
        what,
        job.handler,
        job.id,
        type(exc).__name__,
        exc,
        exc_info=exc,
        extra={"job_id": job.id, "handler": job.handler},
    )


def _fail(ctx: Context, exc: Exception) -> None:
    ctx.set_outcome(status_for(exc), exc)
    if not isinstance(exc, JobError | InvalidArgs):  # outcomes, not failures to log
        log_failure(ctx, exc, "handler")


def _timed_out(ctx: Context) -> None:
    limit = ctx.job.timeout
    if limit is None and ctx.worker is not None:
        limit = ctx.worker.timeout_for(ctx.job.handler)  # the handler's own timeout option
    timeout = JobTimeout(f"exceeded its timeout of {limit or 0:g}s")
    ctx.set_outcome(_TIMEOUT, timeout, cancelled=True)


def _cancelled(ctx: Context, exc: asyncio.CancelledError) -> None:
    ctx.set_outcome(_CANCELLED, exc, cancelled=True)


def _async_outcome(fn: Any) -> Handler:
    @functools.wraps(fn)
    async def run(job: Job) -> None:
        ctx = _context(job)
        try:
            if ctx.deadline is None:
                result = await fn(job)
            else:
                timer = asyncio.timeout(ctx.time_left())
                try:
                    async with timer:
                        result = await fn(job)
                except TimeoutError:
                    if not timer.expired():
                        raise
                if timer.expired():  # also when the handler swallowed the cancellation
                    _timed_out(ctx)
                    return
        except asyncio.CancelledError as exc:
            _cancelled(ctx, exc)
            raise
        except Exception as exc:
            _fail(ctx, exc)
        else:
            ctx.returned(result)

    return run


def _sync_outcome(fn: Any) -> Handler:
    @functools.wraps(fn)
    async def run(job: Job) -> None:
        ctx = _context(job)
        loop = asyncio.get_running_loop()
        executor = ctx.worker.thread_pool() if ctx.worker is not None else None
        call = contextvars.copy_context().run
        try:
            if ctx.deadline is None:
                result = await loop.run_in_executor(executor, call, fn, job)
                if inspect.isawaitable(result):  # e.g. a lambda returning a coroutine
                    result = await result
            else:
                timer = asyncio.timeout(ctx.time_left())
                try:
                    async with timer:
                        result = await loop.run_in_executor(executor, call, fn, job)
                        if inspect.isawaitable(result):
                            result = await result
                except TimeoutError:
                    if not timer.expired():
                        raise
                    ctx.abandon()
                    _timed_out(ctx)
                    return
        except asyncio.CancelledError as exc:
            ctx.abandon()
            _cancelled(ctx, exc)
            raise
        except Exception as exc:
            _fail(ctx, exc)
        else:
            ctx.returned(result)

    return run
