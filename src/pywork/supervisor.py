"""``pywork worker --processes N``: N consumer processes under one supervisor.

The supervisor starts each child as ``python -m pywork worker ... --processes 1``,
restarts a child that dies unexpectedly (with exponential backoff, reset after a
minute of uptime), forwards SIGTERM/SIGINT to every child, and exits 0 once they
all drained. With ``--http`` it serves /live, /ready (all children up) and /metrics
aggregated over the children (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["supervise"]

log = logging.getLogger("pywork.supervisor")

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
_STABLE_AFTER = 60.0


def _child_argv(argv: Sequence[str]) -> list[str]:
    """`argv` without --processes/--http (and their values), plus --processes 1."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in ("--processes", "--http"):
            skip = "=" not in arg
            continue
        out.append(arg)
    return [sys.executable, "-m", "pywork", *out, "--processes", "1"]


class _Child:
    def __init__(self, number: int, argv: list[str], env: dict[str, str]) -> None:
        self.number = number
        self.argv = argv
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.backoff = _BACKOFF_FIRST
        self.restarts = 0

    async def start(self) -> None:
        env = {**self.env, "PYWORK_PROCESS_NUMBER": str(self.number)}
        # own session: a terminal's Ctrl-C reaches the supervisor only, which forwards it once
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=env, start_new_session=True
        )
        self.started = time.monotonic()
        log.info("started process %d (pid %d)", self.number, self.proc.pid)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(sig)


async def _watch(child: _Child, stopping: asyncio.Event) -> int:
    """Keep `child` running until the supervisor stops; return its last exit code."""
    while True:
        await child.start()
        assert child.proc is not None
        code = await child.proc.wait()
        if stopping.is_set():
            return code
        uptime = time.monotonic() - child.started
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
            await asyncio.wait_for(stopping.wait(), child.backoff)
            return code
        except TimeoutError:
            pass
        child.backoff = min(child.backoff * 2, _BACKOFF_MAX)


async def _supervise(args: argparse.Namespace, argv: Sequence[str]) -> int:
    env = dict(os.environ)
    metrics_dir: str | None = None
    if args.http is not None:
        metrics_dir = tempfile.mkdtemp(prefix="pywork-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    children = [_Child(i, _child_argv(argv), env) for i in range(1, args.processes + 1)]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[signal.Signals] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        stopping.set()
        for child in children:
            child.signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    server = None
    try:
        if args.http is not None:
            server = await _serve_group(children, args.http, metrics_dir)
        codes = await asyncio.gather(*(_watch(child, stopping) for child in children))
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if server is not None:
            await server.stop()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    failed = [c for c in codes if c not in (0, -signal.SIGTERM, -signal.SIGINT)]
    return 1 if failed else 0


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
