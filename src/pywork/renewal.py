"""Lease renewal from a thread of its own, and a watchdog of the consumer's event loop.

An ``async def`` handler that blocks (``time.sleep(8)``, a synchronous driver, a long
computation) blocks its event loop: renewals made from that loop would stop, the leases
would lapse and other consumers would run the same jobs again. So a consumer renews
from a :class:`LeaseKeeper`: a thread with its own event loop and its own broker
connection (:meth:`BrokerFront.twin <pywork.brokers.BrokerFront.twin>`), which

- renews the consumer's leases every ``renew_every`` seconds, with the progress
  reports made since the last renewal, and hands "cancelled"/"lost" reasons back to
  the consumer's loop (``loop.call_soon_threadsafe``);
- pings the consumer's loop a few times a second; when a ping is not answered for more
  than :data:`STALL_AFTER` seconds it logs ONE warning naming the running handlers and
  the stack where the loop's thread is stuck, and an info line once it answers again.

A broker without ``twin`` (a user's own :class:`~pywork.brokers.Broker`) is renewed
through the consumer's loop, as before: the watchdog still warns.
"""

from __future__ import annotations

import asyncio
import faulthandler
import linecache
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from pywork.brokers.base import Broker, Delivery
from pywork.job import Progress
from pywork.schedule import Execution

__all__ = ["STALL_AFTER", "Held", "LeaseKeeper", "thread_stack"]

#: Seconds the consumer's event loop may go without answering before the watchdog warns.
STALL_AFTER = 1.0
#: The longest the keeper's thread sleeps between two looks (watchdog and renewals).
TICK = 0.1

_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')


class Held(Protocol):
    """What the keeper reads of a lease the consumer holds."""

    delivery: Delivery
    execution: Execution | None
    progress_sent: Progress | None
    lost: bool
    settling: bool


def thread_stack(ident: int) -> str:
    """The stack of the thread `ident`, most recent call last, as in a traceback (from
    the callback its event loop runs, when it runs one).

    Read with :func:`faulthandler.dump_traceback` (it sees every thread, whatever
    holds the GIL); "" when the thread is not found.
    """
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as dump:
        faulthandler.dump_traceback(dump, all_threads=True)
        dump.seek(0)
        text = dump.read()
    frames: list[str] = []
    inside = False
    for line in text.splitlines():
        header = _THREAD.match(line)
        if header is not None:
            inside = int(header.group(1), 16) == ident
            continue
        found = _FRAME.match(line) if inside else None
        if found is not None:
            path, number, function = found.group(1), int(found.group(2)), found.group(3)
            source = linecache.getline(path, number).strip()
            frames.append(
                f'  File "{path}", line {number}, in {function}'
                + (f"\n    {source}" if source else "")
            )
    frames.reverse()
    # what the loop runs starts after its last callback frame (asyncio's Handle._run)
    starts = [i for i, frame in enumerate(frames) if "asyncio" in frame and "in _run\n" in frame]
    if starts and starts[-1] + 1 < len(frames):
        frames = frames[starts[-1] + 1 :]
    return "\n".join(frames)


class LeaseKeeper:
    """Renews a consumer's leases from its own thread and event loop; see the module doc.

    Args:
        broker: the consumer's broker (its ``twin()`` is opened in the thread).
        lease: the lease, in seconds, each renewal asks for.
        every: seconds between renewals.
        held: returns the leases to renew now (called in the keeper's thread).
        ended: called on the consumer's loop with ``{lease: "cancelled" | "lost"}``.
        logger: where renewal failures and the watchdog's warnings go.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        lease: float,
        every: float,
        held: Callable[[], Sequence[Held]],
        ended: Callable[[Mapping[Any, str]], None],
        logger: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self.broker = broker
        self.lease = lease
        self.every = every
        self.held = held
        self.ended = ended
        self.logger = logger
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the consumer's
        self._loop_thread = 0
        self._own_loop: asyncio.AbstractEventLoop | None = None  # the keeper's
        self._wake: asyncio.Event | None = None
        self._done: asyncio.Future[None] | None = None
        self._pinged = 0  # watchdog: pings sent, and the last one answered
        self._answered = 0
        self._pinged_at = 0.0
        self._stalled = False

    # on the consumer's loop -----------------------------------------------------
    def start(self) -> None:
        """Start the thread (call it on the consumer's event loop)."""
        self._loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._done = loop.create_future()
        self._thread = threading.Thread(target=self._main, name="pywork-lease-keeper", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop renewing, close the twin and return once the thread has ended."""
        self._stopping.set()
        own = self._own_loop
        if own is not None:
            try:
                own.call_soon_threadsafe(self._wake_up)
            except RuntimeError:  # its loop is already closed: the thread is ending
                pass
        if self._done is not None:
            await asyncio.shield(self._done)
        if self._thread is not None:
            self._thread.join()

    def _pong(self, ping: int) -> None:
        self._answered = ping

    def _finished(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # in the keeper's thread -----------------------------------------------------
    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException:  # never silent: the leases are no longer renewed
            self.logger.exception("the lease keeper thread failed")
        finally:
            self._on_loop(self._finished)

    def _on_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Call `callback(*args)` on the consumer's loop (dropped once it is closed)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # closed meanwhile: nobody is left to tell
            pass

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        self._own_loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        twin: Any = None  # this thread's broker; None: renew through the consumer's loop
        can_twin = callable(getattr(self.broker, "twin", None))
        try:
            next_renewal = time.monotonic() + self.every
            while not self._stopping.is_set():
                now = time.monotonic()
                self._watch(now)
                if now >= next_renewal:
                    if twin is None and can_twin:
                        twin = await self._open_twin()
                    await self._renew(twin)
                    next_renewal = time.monotonic() + self.every
                pause = min(TICK, max(0.0, next_renewal - time.monotonic()))
                try:
                    await asyncio.wait_for(self._wake.wait(), pause)
                except TimeoutError:
                    pass
        finally:
            if twin is not None and twin is not self.broker:
                try:
                    await twin.close()
                except Exception as exc:
                    self.logger.warning(
                        "closing the lease keeper's broker failed (%s: %s)", type(exc).__name__, exc
                    )

    async def _open_twin(self) -> Any:
        try:
            return await self.broker.twin()  # type: ignore[attr-defined]
        except Exception as exc:
            self.logger.warning(
                "the lease keeper cannot open its own broker connection (%s: %s); "
                "renewing through the event loop until it can",
                type(exc).__name__,
                exc,
            )
            return None

    async def _renew(self, twin: Any) -> None:
        try:
            leases = [lease for lease in self.held() if not lease.lost and not lease.settling]
        except RuntimeError:  # the held dict changed size under us: next time
            return
        if not leases:
            return
        progress = {}  # the reports made since the last renewal, one per job
        for held in leases:
            execution = held.execution
            report = None if execution is None else execution.progress
            if report is not None and report is not held.progress_sent:
                progress[held.delivery.id] = report
        deliveries = [lease.delivery for lease in leases]
        try:
            if twin is None:
                reasons = await self._renew_on_loop(deliveries, progress)
            else:
                reasons = await twin.renew(deliveries, lease=self.lease, progress=progress)
        except Exception as exc:
            self.logger.warning(
                "broker renew failed (%s: %s); retrying in %.2fs",
                type(exc).__name__,
                exc,
                self.every,
            )
            return
        for held in leases:
            if held.delivery.id in progress:
                held.progress_sent = progress[held.delivery.id]
        if reasons:
            by_id = {lease.delivery.id: lease for lease in leases}
            found = {by_id[job_id]: why for job_id, why in reasons.items() if job_id in by_id}
            if found:
                self._on_loop(self.ended, found)

    async def _renew_on_loop(
        self, deliveries: list[Delivery], progress: dict[str, Progress]
    ) -> dict[str, str]:
        loop = self._loop
        assert loop is not None
        future: Future[dict[str, str]] = asyncio.run_coroutine_threadsafe(
            self.broker.renew(deliveries, lease=self.lease, progress=progress), loop
        )
        return await asyncio.wrap_future(future)

    def _watch(self, now: float) -> None:
        """The watchdog: ping the consumer's loop; warn once when it does not answer."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._answered == self._pinged:
            if self._stalled:
                self._stalled = False
                self.logger.info("the event loop answers again after %.1fs", now - self._pinged_at)
            self._pinged += 1
            self._pinged_at = now
            self._on_loop(self._pong, self._pinged)
            return
        if not self._stalled and now - self._pinged_at > STALL_AFTER:
            self._stalled = True
            self._warn_stalled(now - self._pinged_at)

    def _warn_stalled(self, seconds: float) -> None:
        try:
            leases = list(self.held())
        except RuntimeError:
            leases = []
        running = []
        for held in leases:
            execution = held.execution
            if execution is not None and not execution.done():
                running.append(f"{execution.job.handler} (job {held.delivery.id})")
        stack = thread_stack(self._loop_thread) or "  (not found)"
        self.logger.warning(
            "the event loop has not answered for %.1fs: a handler blocks it (use await, or "
            "a plain def handler, which runs in a thread); running: %s; the loop is stuck at "
            "(most recent call last):\n%s",
            seconds,
            ", ".join(running) or "no handler",
            stack,
            extra={"handlers": [r.split(" ", 1)[0] for r in running]},
        )
