"""``pywork worker --processes N``: N consumer processes under one supervisor.

The supervisor starts each child as ``python -m pywork worker ... --processes 1``,
restarts a child that dies unexpectedly (with exponential backoff, reset after a
minute of uptime), forwards SIGTERM/SIGINT to every child, and exits 0 once they
all drained. With ``--http`` it serves /live, /ready (all children up) and /metrics
aggregated over the children (prometheus_client's multiprocess mode).

A child that fails before any process of the group consumed (a mistyped APP, an
unreachable broker) is not restarted: the supervisor stops the others and exits with
the child's status (2 for its usage error, else 1). A child killed by a signal, or one
failing after the group ran, is restarted.

Children never outlive the supervisor, however it died: on Linux each asks the kernel
for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and everywhere each
watches a pipe whose only write end the supervisor holds (:class:`ParentWatch`). A
child whose supervisor is gone drains for a few seconds, then exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ChildLink", "ParentWatch", "child_link", "supervise"]

log = logging.getLogger("pywork.supervisor")

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0
#: seconds an orphaned child may drain before it exits; its watch ends it 5 s later
ORPHAN_DRAIN = 3.0
_ORPHAN_HARD_EXIT = ORPHAN_DRAIN + 5.0
#: seconds the other children get to stop after a startup failure, before SIGKILL
_ABORT_GRACE = 5.0

# what the supervisor tells each child, in its environment
_ENV_PID = "PYWORK_SUPERVISOR_PID"
_ENV_WATCH_FD = "PYWORK_SUPERVISOR_FD"
_ENV_READY_FD = "PYWORK_READY_FD"
_PR_SET_PDEATHSIG = 1


# the child's side ------------------------------------------------------------------
class ParentWatch:
    """Watches, from a thread of its own, the read end of a pipe whose only write end
    the supervisor holds: end of file means the supervisor is gone, however it died.

    A thread (not the event loop) so that a child whose loop is blocked still notices.

    Args:
        fd: the read end of the pipe (closed by :meth:`close`).
        on_lost: called once, from the watch thread, when the supervisor is gone.
        hard_exit_after: seconds after the loss at which the process kills itself
            (SIGKILL: its leases lapse and its jobs are delivered again) if it has not
            exited yet; None never.
    """

    def __init__(
        self, fd: int, on_lost: Callable[[], None], *, hard_exit_after: float | None
    ) -> None:
        self.fd = fd
        self._on_lost = on_lost
        self._hard_exit_after = hard_exit_after
        self._lost = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pywork-parent-watch", daemon=True)

    @property
    def lost(self) -> bool:
        """True once the supervisor is gone."""
        return self._lost.is_set()

    def start(self) -> None:
        """Start the watch thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the hard-exit countdown (the process is exiting on its own)."""
        self._closed.set()

    def _run(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 64)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                break
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if self._closed.is_set():
            return
        self._lost.set()
        self._on_lost()
        if self._hard_exit_after is not None and not self._closed.wait(self._hard_exit_after):
            os.write(2, b"pywork: the supervisor is gone and this process did not stop: exiting\n")
            os.kill(os.getpid(), signal.SIGKILL)


def _set_pdeathsig(sig: int) -> bool:
    """Ask the Linux kernel to send `sig` to this process when its parent dies."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class ChildLink:
    """A child's link to its supervisor (see :func:`child_link`).

    Attributes:
        supervisor_pid: the supervisor's process id.
        watch: the watch on the supervisor's pipe, or None if the pipe was not passed.
    """

    supervisor_pid: int
    watch: ParentWatch | None
    _ready_fd: int | None

    @property
    def orphaned(self) -> bool:
        """True once the supervisor is gone (this process was re-parented)."""
        return (self.watch is not None and self.watch.lost) or os.getppid() != self.supervisor_pid

    def consuming(self) -> None:
        """Tell the supervisor this process got as far as consuming (once)."""
        fd, self._ready_fd = self._ready_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"1")
                os.close(fd)

    def close(self) -> None:
        """The process is exiting on its own: stop the watch's countdown."""
        if self.watch is not None:
            self.watch.close()


def child_link(on_lost: Callable[[], None]) -> ChildLink | None:
    """In a child of the supervisor, set up its side of the link; None elsewhere.

    Asks for SIGTERM on the supervisor's death (Linux) and starts a :class:`ParentWatch`
    calling `on_lost` (from its thread) when the supervisor is gone; the process exits
    on its own :data:`ORPHAN_DRAIN` + 5 s later at the latest.
    """
    pid = os.environ.pop(_ENV_PID, None)
    if pid is None:
        return None
    watch_fd = os.environ.pop(_ENV_WATCH_FD, None)
    ready_fd = os.environ.pop(_ENV_READY_FD, None)
    _set_pdeathsig(signal.SIGTERM)
    watch = None
    if watch_fd is not None:
        watch = ParentWatch(int(watch_fd), on_lost, hard_exit_after=_ORPHAN_HARD_EXIT)
        watch.start()
    return ChildLink(int(pid), watch, int(ready_fd) if ready_fd is not None else None)


# the supervisor's side ---------------------------------------------------------------
def _child_argv(argv: Sequence[str]) -> list[str]:
    """`argv` without --processes/--http/--broker (and their values), plus --processes 1.

    The broker URL reaches the children through ``PYWORK_BROKER`` instead (see
    :func:`_supervise`): a password in it never shows in ``ps``.
    """
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--processes", "--http", "--broker"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return [sys.executable, "-m", "pywork", *out, "--processes", "1"]


class _Group:
    """What the children share: the supervisor's pipe, and whether any consumed yet."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.watch_read, self.watch_write = os.pipe()  # children hold only the read end
        self.consumed = False
        self.failure: int | None = None  # the exit status after a startup failure
        self.stopping = asyncio.Event()
        self.aborting: asyncio.Task[None] | None = None  # stopping the others, awaited

    def close(self) -> None:
        for fd in (self.watch_read, self.watch_write):
            with contextlib.suppress(OSError):
                os.close(fd)


class _Child:
    def __init__(self, number: int, argv: list[str], group: _Group) -> None:
        self.number = number
        self.argv = argv
        self.group = group
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.backoff = _BACKOFF_FIRST
        self.restarts = 0
        self.consumed = False  # this run got as far as consuming
        self._ready: int | None = None

    async def start(self) -> None:
        ready_read, ready_write = os.pipe()
        env = {
            **self.group.env,
            "PYWORK_PROCESS_NUMBER": str(self.number),
            _ENV_PID: str(os.getpid()),
            _ENV_WATCH_FD: str(self.group.watch_read),
            _ENV_READY_FD: str(ready_write),
        }
        self.consumed = False
        try:
            # own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=env,
                start_new_session=True,
                pass_fds=(self.group.watch_read, ready_write),
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        os.set_blocking(ready_read, False)
        self._ready = ready_read
        asyncio.get_running_loop().add_reader(ready_read, self._read_ready)
        self.started = time.monotonic()
        log.info("started process %d (pid %d)", self.number, self.proc.pid)

    def _read_ready(self) -> None:
        fd = self._ready
        if fd is None:
            return
        try:
            data = os.read(fd, 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.consumed = self.group.consumed = True
        self._close_ready()

    def _close_ready(self) -> None:
        fd, self._ready = self._ready, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    async def wait(self) -> int:
        """Wait for the child's exit; its status (negative: the signal that killed it)."""
        assert self.proc is not None
        code = await self.proc.wait()
        self._read_ready()  # it may have written just before it died
        self._close_ready()
        return code

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


async def _watch(child: _Child, children: list[_Child]) -> int | None:
    """Keep `child` running until the supervisor stops; return its last exit status
    (None when it was not running at the stop)."""
    group = child.group
    while True:
        await child.start()
        assert child.proc is not None
        code = await child.wait()
        if group.stopping.is_set():
            return code
        uptime = time.monotonic() - child.started
        if code > 0 and not group.consumed:
            # a startup mistake (bad APP, bad option, broker unreachable): restarting
            # would only loop; stop the others and report the child's status
            log.error(
                "process %d (pid %d) exited with %d before it consumed: stopping",
                child.number,
                child.proc.pid,
                code,
            )
            group.failure = 2 if code == 2 else 1
            group.stopping.set()
            group.aborting = asyncio.get_running_loop().create_task(_abort(children))
            return code
        if uptime > _STABLE_AFTER:
            child.backoff = _BACKOFF_FIRST
        log.warning(
            "process %d (pid %d) exited with %d after %.1fs; restarting in %.1fs",
            child.number,
            child.proc.pid,
            code,
            uptime,
            child.backoff,
        )
        child.restarts += 1
        try:
            await asyncio.wait_for(group.stopping.wait(), child.backoff)
            return None
        except TimeoutError:
            pass
        child.backoff = min(child.backoff * 2, _BACKOFF_MAX)


async def _abort(children: list[_Child]) -> None:
    """Stop the children after a startup failure: SIGTERM, then SIGKILL after a grace."""
    for child in children:
        child.signal(signal.SIGTERM)
    exits = [asyncio.ensure_future(c.proc.wait()) for c in children if c.alive and c.proc]
    if exits:
        await asyncio.wait(exits, timeout=_ABORT_GRACE)
    for child in children:
        child.signal(signal.SIGKILL)
    for waiting in exits:
        waiting.cancel()


async def _supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    env = dict(os.environ)
    if args.broker:  # by the environment, not the command line: `ps` shows no password
        env["PYWORK_BROKER"] = args.broker
    metrics_dir: str | None = None
    if args.http is not None:
        metrics_dir = tempfile.mkdtemp(prefix="pywork-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    group = _Group(env)
    children = [_Child(i, _child_argv(argv), group) for i in range(1, args.processes + 1)]
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        group.stopping.set()
        for child in children:
            child.signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    server = None
    try:
        if args.http is not None:
            server = await _serve_group(children, args.http, metrics_dir)
        codes = await asyncio.gather(*(_watch(child, children) for child in children))
        if group.aborting is not None:
            await group.aborting
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if server is not None:
            await server.stop()
        group.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    if group.failure is not None:
        return group.failure
    stopped = (None, 0, -signal.SIGTERM, -signal.SIGINT)
    return 1 if any(code not in stopped for code in codes) else 0


async def _serve_group(
    children: list[_Child], address: tuple[str, int], metrics_dir: str | None
) -> Any:
    """Serve :func:`pywork.ops.create_app` over the children: /metrics sums their
    metrics files, /ready is OK while every child is up, ``GET /`` lists them."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from pywork import ops

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]

    def all_up() -> bool:
        return all(child.alive for child in children)

    def processes() -> dict[str, Any]:
        return {
            "processes": [
                {
                    "number": c.number,
                    "pid": c.proc.pid if c.proc else None,
                    "alive": c.alive,
                    "restarts": c.restarts,
                }
                for c in children
            ]
        }

    app = ops.create_app(registry=registry, ready=all_up, summary=processes)
    host, port = address
    server = ops.OpsServer(app, host=host, port=port)
    await server.start()
    return server


def supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run ``args.processes`` consumer processes until SIGTERM/SIGINT; return the exit status."""
    return asyncio.run(_supervise(args, argv))
