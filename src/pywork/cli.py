"""The ``pywork`` command: workers, enqueueing, queue inspection, dead letters, the demo.

Exit codes: 0 success, 1 runtime failure, 2 usage error (one line, no traceback
unless ``--debug``).

A ``sqlite:///relative.db`` url is resolved against the working directory when the
command starts, so the banner, the records and every error name the absolute path; the
commands that only read or change existing jobs (``queues``, ``status``, ``dead``,
``schedules``, ``cancel``, ``unschedule``) never create a database file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import inspect
import json
import logging
import math
import os
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from pywork.brokers import DEFAULT_URL, Broker, JobRecord, connect, mask_url
from pywork.errors import BrokerError, BrokerUnavailable, SerializationError
from pywork.job import Job
from pywork.task import Task
from pywork.worker import Worker

__all__ = ["AppImportError", "Failure", "UsageError", "load_app", "main"]

log = logging.getLogger("pywork.cli")


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


class Failure(Exception):
    """A runtime failure the command explains itself: printed as one line, exit status 1."""


class AppImportError(Failure):
    """Raised when the module named by APP exists but raises while it is imported."""

    def __init__(self, spec: str, error: BaseException) -> None:
        where = ""
        if not isinstance(error, SyntaxError):  # a SyntaxError's text names file and line
            frames = traceback.extract_tb(error.__traceback__)
            user = [f for f in frames if "importlib" not in f.filename] or frames
            if user:
                where = f" ({user[-1].filename}, line {user[-1].lineno})"
        super().__init__(f"while importing APP {spec!r}: {type(error).__name__}: {error}{where}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# helpers ---------------------------------------------------------------------------
def load_app(spec: str) -> Worker:
    """Import ``module:attribute`` naming a Worker (or a function of no arguments
    returning one).

    Raises:
        UsageError: the spec is malformed, the module or attribute is missing, or it
            names something else than a Worker (a handler function, a task…).
        AppImportError: the module raised while it was imported.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"APP must look like 'module:attribute' (e.g. 'app:worker'), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UsageError(f"cannot import module {module_name!r} (APP {spec!r})") from exc
        raise AppImportError(spec, exc) from exc
    except Exception as exc:
        raise AppImportError(spec, exc) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r} (APP {spec!r})")
        obj = getattr(obj, part)
    if isinstance(obj, Worker):
        return obj
    workers = [name for name, value in vars(module).items() if isinstance(value, Worker)]
    hint = f"; did you mean '{module_name}:{workers[0]}'?" if workers else ""
    if isinstance(obj, Task) or (callable(obj) and not _takes_no_arguments(obj)):
        what = f"the handler {obj.name!r}" if isinstance(obj, Task) else "a function"
        raise UsageError(f"APP {spec!r} names {what}, not a pywork.Worker{hint}")
    if callable(obj) and not inspect.iscoroutinefunction(obj):
        made = obj()
        if isinstance(made, Worker):
            return made
        raise UsageError(
            f"APP {spec!r} returned {type(made).__name__}, expected a pywork.Worker{hint}"
        )
    raise UsageError(f"APP {spec!r} is {type(obj).__name__}, expected a pywork.Worker{hint}")


def _takes_no_arguments(func: Callable[..., Any]) -> bool:
    try:
        inspect.signature(func).bind()
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): let the call decide
        return True
    return True


def _broker_url(value: str | None) -> str:
    """The broker url to use: `value`, else $PYWORK_BROKER, else the default; a
    relative SQLite path resolved against the working directory."""
    url = value or os.environ.get("PYWORK_BROKER") or DEFAULT_URL
    path = _sqlite_path(url)
    if path is None:
        return url
    query = urlsplit(url).query
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


def _sqlite_path(url: str) -> str | None:
    """The absolute path of a ``sqlite:///`` url's file, None for other urls."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or parts.netloc:
        return None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    return str(Path(path).expanduser().absolute()) if path else None


def _redis_db(url: str) -> int | None:
    """The database index in a ``redis://`` url (None: not a redis url, or no index)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss"):
        return None
    index = parts.path.strip("/")
    if not index:
        return None
    if not index.isdigit():
        raise UsageError(
            f"the database of a redis url is a number (redis://host:6379/0), got {index!r}"
        )
    return int(index)


async def _connect(url: str) -> Broker:
    """Connect, turning unreachable brokers and bad URLs into one-line usage errors."""
    db = _redis_db(url)
    try:
        return await connect(url)
    except (ValueError, TypeError, ImportError, BrokerUnavailable) as exc:
        raise UsageError(str(exc)) from exc
    except BrokerError as exc:
        if db:  # the server refused to select it: out of its `databases` range
            host = urlsplit(url).hostname or "localhost"
            port = urlsplit(url).port or 6379
            raise UsageError(
                f"Redis at {host}:{port} refused database {db} ({exc}); a server has "
                "databases 0-15 unless its `databases` setting says more"
            ) from exc
        raise Failure(str(exc)) from exc


async def _with_broker(url: str, work: Callable[[Broker], Awaitable[int]]) -> int:
    broker = await _connect(url)
    try:
        return await work(broker)
    finally:
        await broker.close()


def _run_with_broker(
    option: str | None, work: Callable[[Broker], Awaitable[int]], *, existing: bool = True
) -> int:
    """Run `work` with a broker connected to the url of `option` (see :func:`_broker_url`).

    With `existing`, a SQLite file that does not exist is a failure, not created.
    """
    url = _broker_url(option)
    path = _sqlite_path(url)
    if existing and path is not None and not os.path.exists(path):
        raise Failure(f"no pywork database at {path}")
    return asyncio.run(_with_broker(url, work))


def _console() -> Any:
    """A rich Console for stdout; piped, wide enough that no table is cut."""
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=100_000)
    return console


def _print_json(value: Any) -> None:
    print(json.dumps(value), flush=True)


def _queues(value: str) -> tuple[str, ...]:
    names = tuple(q.strip() for q in value.split(",") if q.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected queue names separated by commas, got {value!r}")
    return names


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value!r}")
    return number


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}") from None
    if number < 0 or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return number


def _positive_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {value!r}") from None
    if number <= 0 or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {value!r}")
    return number


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT (e.g. 127.0.0.1:9000 or [::1]:9000), got {value!r}"
        )
    if host.startswith("[") and host.endswith("]"):  # an IPv6 address: [::1]:9000
        host = host[1:-1]
    return host or "127.0.0.1", int(port)


def _record_dict(record: JobRecord) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": record.id,
        "handler": record.handler,
        "queue": record.queue,
        "state": str(record.state),
        "status": int(record.status) if record.status is not None else None,
        "attempts": record.attempts,
        "error": record.error,
        "args": record.args,
        "key": record.key,
        "enqueued_at": iso(record.enqueued_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "run_at": iso(record.run_at),
        "result": record.result,
        "progress": None
        if record.progress is None
        else {
            "current": record.progress.current,
            "total": record.progress.total,
            "message": record.progress.message,
            "updated_at": iso(record.progress.updated_at),
        },
    }


def _progress_text(record: JobRecord) -> str | None:
    """``3/10 (30%) resizing, 2026-12-02T01:02:03+00:00``, or None."""
    report = record.progress
    if report is None:
        return None
    text = f"{report.current:g}"
    if report.total is not None:
        text += f"/{report.total:g} ({100 * report.current / report.total:.0f}%)"
    if report.message:
        text += f" {report.message}"
    return f"{text}, {report.updated_at.isoformat()}"


# commands --------------------------------------------------------------------------
def _cmd_enqueue(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--args is not valid JSON ({exc.msg} at position {exc.pos})") from exc
    if not isinstance(payload, dict):
        raise UsageError(f"--args must be a JSON object, got {type(payload).__name__}")
    at: datetime | None = None
    if args.at is not None:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError as exc:
            raise UsageError(f"--at must be an ISO 8601 date-time, got {args.at!r}") from exc
    try:
        job = Job(
            args.handler,
            payload,
            queue=args.queue,
            key=args.key,
            timeout=args.timeout,
            max_retries=args.max_retries,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc

    async def work(broker: Broker) -> int:
        try:
            job_id = await broker.enqueue(job, at=at, delay=args.delay)
        except SerializationError as exc:
            raise UsageError(str(exc)) from exc
        if job_id != job.id:
            print(
                f"pywork enqueue: nothing enqueued: the live job {job_id} holds key {job.key!r}",
                file=sys.stderr,
            )
        print(job_id)
        return 0

    return _run_with_broker(args.broker, work, existing=False)


def _cmd_status(args: argparse.Namespace) -> int:
    async def work(broker: Broker) -> int:
        record = await broker.get(args.job_id)
        if record is None:
            print(
                f"pywork status: no job {args.job_id!r} in {mask_url(broker.url)}", file=sys.stderr
            )
            return 1
        fields = _record_dict(record)
        if args.json:
            print(json.dumps(fields, indent=2))
            return 0
        fields = {
            "broker": mask_url(broker.url),
            **fields,
            "args": json.dumps(record.args),
            "result": None if record.result is None else json.dumps(record.result),
            "progress": _progress_text(record),
        }
        width = max(len(name) for name in fields)
        for name, value in fields.items():
            print(f"{name:<{width}}  {'-' if value is None else value}")
        return 0

    return _run_with_broker(args.broker, work)


_COUNTS = ("queued", "scheduled", "running", "failed", "succeeded", "dead", "cancelled")


def _queues_table(stats: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="pywork queues")
    table.add_column("queue", style="bold")
    for column in _COUNTS:
        table.add_column(column, justify="right")
    for name in sorted(stats):
        table.add_row(name, *(str(getattr(stats[name], c)) for c in _COUNTS))
    if not stats:
        table.add_row("(no queues)", *("" for _ in _COUNTS))
    return table


def _queues_json(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {name: {c: getattr(counts, c) for c in _COUNTS} for name, counts in stats.items()}


def _cmd_queues(args: argparse.Namespace) -> int:
    from rich.live import Live

    console = _console()

    async def work(broker: Broker) -> int:
        if args.json or not args.watch or not console.is_terminal:  # one table per refresh
            while True:
                stats = await broker.stats()
                if args.json:
                    _print_json(_queues_json(stats))
                else:
                    console.print(_queues_table(stats))
                if not args.watch:
                    return 0
                await asyncio.sleep(args.interval)
        first = _queues_table(await broker.stats())
        with Live(first, console=console) as live, contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(args.interval)
                live.update(_queues_table(await broker.stats()))
        return 0

    try:
        return _run_with_broker(args.broker, work)
    except KeyboardInterrupt:
        return 0


def _dead_table(records: list[JobRecord]) -> Any:
    from rich.table import Table

    table = Table(title="pywork dead jobs")
    for column in ("id", "handler", "queue", "status", "attempts", "finished", "error"):
        table.add_column(column)
    for record in records:
        finished = record.finished_at.isoformat(timespec="seconds") if record.finished_at else "-"
        table.add_row(
            record.id,
            record.handler,
            record.queue,
            str(int(record.status)) if record.status is not None else "-",
            str(record.attempts),
            finished,
            record.error or "",
        )
    if not records:
        table.add_row("(no dead jobs)", *("" for _ in range(6)))
    return table


def _confirm(question: str) -> bool:
    """Ask `question` on the terminal; True for y/yes."""
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    return answer in ("y", "yes")


def _cmd_dead(args: argparse.Namespace) -> int:
    async def work(broker: Broker) -> int:
        if args.action == "list":
            records = await broker.dead_letters(args.queue, limit=args.limit)
            if args.json:
                for record in records:
                    _print_json(_record_dict(record))
            else:
                _console().print(_dead_table(records))
            return 0
        if args.action == "retry":
            if args.all == (args.job_id is not None):
                raise UsageError("pywork dead retry: give a JOB_ID or --all (not both)")
            if args.all:
                retried = 0
                while batch := await broker.dead_letters(args.queue, limit=500):
                    for record in batch:
                        retried += await broker.retry_dead(record.id)
                print(f"retried {retried} dead jobs")
                return 0
            if not await broker.retry_dead(args.job_id):
                print(f"pywork dead retry: {args.job_id!r} is not a dead job", file=sys.stderr)
                return 1
            print(f"retried {args.job_id}")
            return 0
        if not args.yes and sys.stdin.isatty():
            stats = await broker.stats()
            dead = sum(c.dead for q, c in stats.items() if args.queue in (None, q))
            where = f" of queue {args.queue!r}" if args.queue else ""
            question = f"purge {dead} dead jobs{where} from {mask_url(broker.url)}?"
            if dead and not _confirm(question):
                print("pywork dead purge: nothing purged", file=sys.stderr)
                return 1
        purged = await broker.purge_dead(args.queue)
        print(f"purged {purged} dead jobs")
        return 0

    return _run_with_broker(args.broker, work)


def _cmd_schedules(args: argparse.Namespace) -> int:
    from rich.table import Table

    async def work(broker: Broker) -> int:
        records = await broker.schedules()
        if args.json:
            _print_json(
                [
                    {
                        "name": r.name,
                        "handler": r.job.handler,
                        "queue": r.job.queue,
                        "args": r.job.args,
                        "every": r.every,
                        "cron": r.cron,
                        "timezone": r.timezone,
                        "next_run_at": r.next_run_at.isoformat(),
                        "last_run_at": r.last_run_at.isoformat() if r.last_run_at else None,
                    }
                    for r in records
                ]
            )
            return 0
        table = Table(title="pywork schedules")
        for column in ("name", "handler", "queue", "timing", "next run", "last run"):
            table.add_column(column)
        for record in records:
            timing = f"every {record.every:g}s" if record.every is not None else record.cron
            if record.cron is not None and record.timezone != "UTC":
                timing = f"{timing} ({record.timezone})"
            table.add_row(
                record.name,
                record.job.handler,
                record.job.queue,
                timing,
                record.next_run_at.isoformat(timespec="seconds"),
                record.last_run_at.isoformat(timespec="seconds") if record.last_run_at else "-",
            )
        if not records:
            table.add_row("(no schedules)", "", "", "", "", "")
        _console().print(table)
        return 0

    return _run_with_broker(args.broker, work)


def _cmd_cancel(args: argparse.Namespace) -> int:
    async def work(broker: Broker) -> int:
        if await broker.cancel(args.job_id):
            print(f"cancelled {args.job_id}")
            return 0
        record = await broker.get(args.job_id)
        if record is None:
            print(
                f"pywork cancel: no job {args.job_id!r} in {mask_url(broker.url)}", file=sys.stderr
            )
        else:
            print(
                f"pywork cancel: job {args.job_id} is {record.state}: nothing to cancel",
                file=sys.stderr,
            )
        return 1

    return _run_with_broker(args.broker, work)


def _cmd_unschedule(args: argparse.Namespace) -> int:
    async def work(broker: Broker) -> int:
        if await broker.unschedule(args.name):
            print(f"unscheduled {args.name} (a worker declaring it again puts it back)")
            return 0
        print(
            f"pywork unschedule: no schedule {args.name!r} in {mask_url(broker.url)}",
            file=sys.stderr,
        )
        return 1

    return _run_with_broker(args.broker, work)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _JsonFormatter(logging.Formatter):
    """One JSON object per record, with job_id and handler when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("job_id", "handler", "attempt", "status", "retry_at", "handlers"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _cmd_worker(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level, args.log_format)
    if args.processes > 1:
        from pywork.supervisor import supervise

        return supervise(args, sys.argv[1:] if args.argv is None else args.argv)
    from pywork.supervisor import child_link

    orphaned: list[Callable[[], None]] = []  # set once the event loop runs
    link = child_link(lambda: orphaned[0]() if orphaned else None)
    try:
        worker = load_app(args.app)
        gc.freeze()  # what the app imported lives forever: keep it out of full collections
        return asyncio.run(_run_worker(worker, args, link, orphaned))
    finally:
        if link is not None:
            link.close()


async def _run_worker(
    worker: Worker,
    args: argparse.Namespace,
    link: Any = None,
    orphaned: list[Callable[[], None]] | None = None,
) -> int:
    from pywork import __version__
    from pywork.supervisor import ORPHAN_DRAIN

    url = _broker_url(args.broker)
    queues: tuple[str, ...] = args.queues
    broker = await _connect(url)
    server = None
    try:
        if args.http is not None:
            server = await _start_http(worker, broker, args)
        elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # a child of `--processes N --http`: the supervisor serves what it counts
            from pywork.middleware import with_prometheus
            from pywork.middleware._common import marked

            if not marked(worker.middleware, "prometheus"):
                worker.use(with_prometheus())
        concurrency = args.concurrency or worker.max_concurrency or 100
        banner = (
            f"pywork {__version__} worker {worker.name!r}: broker={mask_url(url)} "
            f"queues={','.join(queues)} concurrency={concurrency} "
            f"handlers={','.join(worker.handlers) or '-'}"
        )
        if args.log_format == "json":  # every line is JSON, the banner included
            record = log.makeRecord(log.name, logging.INFO, __file__, 0, banner, (), None)
            banner = _JsonFormatter().format(record)
        print(banner, flush=True)
        loop = asyncio.get_running_loop()
        signals = 0
        stopping: list[asyncio.Task[None]] = []

        def cancel_running() -> None:
            for execution in worker.executions:
                execution.cancel()

        def drain(grace: float) -> None:
            if not stopping:
                stopping.append(loop.create_task(worker.stop(grace)))

        def on_orphaned() -> None:
            log.warning(
                "the supervisor (pid %d) is gone: stopping; running jobs get %gs, then go back",
                link.supervisor_pid,
                ORPHAN_DRAIN,
            )
            drain(ORPHAN_DRAIN)
            loop.call_later(ORPHAN_DRAIN, cancel_running)

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            if link is not None and link.orphaned:
                if signals == 1:
                    on_orphaned()
                return
            if signals == 1:
                log.info(
                    "%s: draining running jobs (up to %gs); a second SIGTERM or SIGINT "
                    "cancels them and they go back to the queue",
                    sig.name,
                    args.drain_timeout,
                )
                drain(args.drain_timeout)
            else:
                log.warning("second signal (%s): cancelling running jobs", sig.name)
                cancel_running()

        if orphaned is not None:
            orphaned.append(lambda: _call_soon(loop, on_orphaned))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            if link is not None:
                link.consuming()
            await worker.consume(
                broker,
                queues=queues,
                concurrency=concurrency,
                lease=args.lease,
                max_retries=args.max_retries,
            )
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await asyncio.gather(*stopping)
        return 0
    finally:
        if server is not None:
            await server.stop()
        await broker.close()


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
    """Run `callback` on `loop` from another thread (nothing if the loop is closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback)


async def _start_http(worker: Worker, broker: Broker, args: argparse.Namespace) -> Any:
    """Serve the ops app; add metrics and a health check only if the worker has none
    (its built-in adapters say so with their ``pywork_instruments`` mark)."""
    try:
        from pywork import ops
        from pywork.middleware import HealthCheck, with_health_check, with_prometheus
        from pywork.middleware._common import marked
    except ImportError as exc:
        raise UsageError(
            f'--http needs the http extras: pip install "pywork[all]" ({exc})'
        ) from exc
    registries = marked(worker.middleware, "prometheus")
    if not registries:
        worker.use(with_prometheus())
    checks = marked(worker.middleware, "health")
    if checks:
        health = checks[0]
        if args.health_error_percentage is not None or args.health_window is not None:
            log.warning("--health-* options ignored: the worker has its own HealthCheck")
    else:
        health = HealthCheck(
            error_percentage=_or(args.health_error_percentage, 1.0),
            window=_or(args.health_window, 300.0),
        )
        worker.use(with_health_check(health))
    app = ops.create_app(
        worker=worker, broker=broker, health=health, registry=registries[0] if registries else None
    )
    host, port = args.http
    server = ops.OpsServer(app, host=host, port=port)
    await server.start()
    return server


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _fraction(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction from 0 to 1, got {value!r}")
    return number


def _window(value: str) -> float:
    number = _seconds(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {value!r}")
    return number


def _cmd_demo(args: argparse.Namespace) -> int:
    from pywork.demo import run_demo

    return asyncio.run(run_demo(jobs=args.jobs))


# parser ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pywork", description="Background work, the way HTTP frameworks do requests."
    )
    from pywork import __version__

    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"pywork {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def broker_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--broker",
            metavar="URL",
            help=f"broker URL (default: $PYWORK_BROKER, else {DEFAULT_URL})",
        )

    p = sub.add_parser("worker", help="consume jobs with the Worker named by APP")
    p.add_argument("app", metavar="APP", help="module:attribute naming a pywork.Worker")
    broker_option(p)
    p.add_argument(
        "--queues", type=_queues, default=("default",), help="queues to consume, comma-separated"
    )
    p.add_argument("--concurrency", type=_positive, help="jobs run at once per process")
    p.add_argument("--processes", type=_positive, default=1, help="consumer processes to fork")
    p.add_argument(
        "--http", type=_host_port, metavar="HOST:PORT", help="serve /metrics, /ready, /live"
    )
    p.add_argument(
        "--health-error-percentage",
        type=_fraction,
        metavar="F",
        help="with --http: /ready is DOWN above this share of errors (0.7 = 70%%; default 1)",
    )
    p.add_argument(
        "--health-window",
        type=_window,
        metavar="S",
        help="with --http: seconds of runs the health check counts (default 300)",
    )
    p.add_argument(
        "--drain-timeout", type=_seconds, default=30.0, help="seconds to finish running jobs"
    )
    p.add_argument(
        "--lease",
        type=_positive_seconds,
        default=30.0,
        help="lease seconds (renewed while running)",
    )
    p.add_argument(
        "--max-retries", type=_non_negative, default=3, help="default retries of failed jobs"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.set_defaults(func=_cmd_worker, argv=None)

    p = sub.add_parser("enqueue", help="enqueue a job and print its id")
    p.add_argument("handler", metavar="HANDLER")
    p.add_argument("--args", default="{}", metavar="JSON", help="the job's args as a JSON object")
    p.add_argument("--queue", default="default")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=_seconds, metavar="S", help="run after S seconds")
    when.add_argument("--at", metavar="ISO8601", help="run at this date-time (naive = local)")
    p.add_argument("--key", help="uniqueness key: nothing is enqueued while a live job holds it")
    p.add_argument(
        "--timeout", type=_positive_seconds, metavar="S", help="seconds one run may take"
    )
    p.add_argument(
        "--max-retries", type=_non_negative, metavar="N", help="retries (default: the worker's)"
    )
    broker_option(p)
    p.set_defaults(func=_cmd_enqueue)

    def json_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = sub.add_parser("status", help="print a job's record")
    p.add_argument("job_id", metavar="JOB_ID")
    json_option(p)
    broker_option(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("cancel", help="cancel a queued, scheduled, failed or running job")
    p.add_argument("job_id", metavar="JOB_ID")
    broker_option(p)
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser("queues", help="table of every queue's job counts")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument(
        "--interval", type=_positive_seconds, default=1.0, help="refresh interval with --watch"
    )
    json_option(p)
    broker_option(p)
    p.set_defaults(func=_cmd_queues)

    p = sub.add_parser("dead", help="list, retry or purge dead jobs")
    p.add_argument("action", choices=["list", "retry", "purge"])
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="with retry: the dead job to retry")
    p.add_argument("--all", action="store_true", help="with retry: retry every dead job")
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--limit", type=_positive, default=100, help="with list: at most this many")
    p.add_argument("--yes", action="store_true", help="with purge: do not ask on a terminal")
    json_option(p)
    broker_option(p)
    p.set_defaults(func=_cmd_dead)

    p = sub.add_parser("schedules", help="table of cluster schedules with next and last runs")
    json_option(p)
    broker_option(p)
    p.set_defaults(func=_cmd_schedules)

    p = sub.add_parser("unschedule", help="remove a cluster schedule")
    p.add_argument("name", metavar="NAME")
    broker_option(p)
    p.set_defaults(func=_cmd_unschedule)

    p = sub.add_parser("demo", help="run the demo on a temporary SQLite broker")
    p.add_argument("--jobs", type=_positive, default=2000, help="jobs to enqueue")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pywork`` command with `argv` (default ``sys.argv[1:]``); return the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        args = _parser().parse_args(arguments)
        if args.command == "worker":
            args.argv = arguments
        status: int = args.func(args)
        return status
    except UsageError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
