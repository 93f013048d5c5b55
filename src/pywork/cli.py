"""The ``pywork`` command: workers, enqueueing, queue inspection, dead letters, the demo.

Exit codes: 0 success, 1 runtime failure, 2 usage error (one line, no traceback
unless ``--debug``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, NoReturn

from pywork.brokers import DEFAULT_URL, Broker, JobRecord, connect, mask_url
from pywork.errors import BrokerUnavailable, SerializationError
from pywork.job import Job
from pywork.worker import Worker

__all__ = ["UsageError", "load_app", "main"]

log = logging.getLogger("pywork.cli")


class UsageError(Exception):
    """A mistake in the command line: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# helpers ---------------------------------------------------------------------------
def load_app(spec: str) -> Worker:
    """Import ``module:attribute`` naming a Worker (or a callable returning one).

    Raises:
        UsageError: the spec is malformed, the module or attribute is missing, or it
            is not a Worker.
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
        raise
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module {module_name!r} has no attribute {attr!r} (APP {spec!r})")
        obj = getattr(obj, part)
    if not isinstance(obj, Worker) and callable(obj):
        obj = obj()
    if not isinstance(obj, Worker):
        raise UsageError(f"APP {spec!r} is {type(obj).__name__}, expected a pywork.Worker")
    return obj


def _broker_url(value: str | None) -> str:
    return value or os.environ.get("PYWORK_BROKER") or DEFAULT_URL


async def _connect(url: str) -> Broker:
    """Connect, turning unreachable brokers and bad URLs into one-line usage errors."""
    try:
        return await connect(url)
    except (ValueError, TypeError, ImportError, BrokerUnavailable) as exc:
        raise UsageError(str(exc)) from exc


async def _with_broker(url: str, work: Callable[[Broker], Awaitable[int]]) -> int:
    broker = await _connect(url)
    try:
        return await work(broker)
    finally:
        await broker.close()


def _queues(value: str) -> tuple[str, ...]:
    names = tuple(q.strip() for q in value.split(",") if q.strip())
    if not names:
        raise UsageError(f"--queues must list queue names separated by commas, got {value!r}")
    return names


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
    if number < 0 or number != number:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {value!r}")
    return number


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:9000), got {value!r}")
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
    }


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
        job = Job(args.handler, payload, queue=args.queue, key=args.key)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from exc

    async def work(broker: Broker) -> int:
        try:
            job_id = await broker.enqueue(job, at=at, delay=args.delay)
        except SerializationError as exc:
            raise UsageError(str(exc)) from exc
        print(job_id)
        return 0

    return asyncio.run(_with_broker(_broker_url(args.broker), work))


def _cmd_status(args: argparse.Namespace) -> int:
    async def work(broker: Broker) -> int:
        record = await broker.get(args.job_id)
        if record is None:
            print(
                f"pywork status: no job {args.job_id!r} in {mask_url(broker.url)}", file=sys.stderr
            )
            return 1
        print(json.dumps(_record_dict(record), indent=2))
        return 0

    return asyncio.run(_with_broker(_broker_url(args.broker), work))


def _queues_table(stats: dict[str, Any]) -> Any:
    from rich.table import Table

    columns = ("queued", "scheduled", "running", "failed", "succeeded", "dead", "cancelled")
    table = Table(title="pywork queues")
    table.add_column("queue", style="bold")
    for column in columns:
        table.add_column(column, justify="right")
    for name in sorted(stats):
        table.add_row(name, *(str(getattr(stats[name], c)) for c in columns))
    if not stats:
        table.add_row("(no queues)", *("" for _ in columns))
    return table


def _cmd_queues(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    console = Console()

    async def work(broker: Broker) -> int:
        if not args.watch or not console.is_terminal:  # piped: print a table per refresh
            while True:
                console.print(_queues_table(await broker.stats()))
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
        return asyncio.run(_with_broker(_broker_url(args.broker), work))
    except KeyboardInterrupt:
        return 0


def _cmd_dead(args: argparse.Namespace) -> int:
    async def work(broker: Broker) -> int:
        if args.action == "list":
            records = await broker.dead_letters(args.queue, limit=args.limit)
            for record in records:
                print(json.dumps(_record_dict(record)))
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
        purged = await broker.purge_dead(args.queue)
        print(f"purged {purged} dead jobs")
        return 0

    return asyncio.run(_with_broker(_broker_url(args.broker), work))


def _cmd_schedules(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    async def work(broker: Broker) -> int:
        records = await broker.schedules()
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
        Console().print(table)
        return 0

    return asyncio.run(_with_broker(_broker_url(args.broker), work))


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
    worker = load_app(args.app)
    gc.freeze()  # what the app imported lives forever: keep it out of full collections
    return asyncio.run(_run_worker(worker, args))


async def _run_worker(worker: Worker, args: argparse.Namespace) -> int:
    from pywork import __version__

    url = _broker_url(args.broker)
    queues = _queues(args.queues)
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

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                log.info(
                    "%s: draining (up to %gs); send SIGINT again to cancel",
                    sig.name,
                    args.drain_timeout,
                )
                stopping.append(loop.create_task(worker.stop(args.drain_timeout)))
            elif sig == signal.SIGINT:
                log.warning("second SIGINT: cancelling running jobs")
                for execution in worker.executions:
                    execution.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
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
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
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
    p.add_argument("--queues", default="default", help="queues to consume, comma-separated")
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
        "--lease", type=_seconds, default=30.0, help="lease seconds (renewed while running)"
    )
    p.add_argument("--max-retries", type=int, default=3, help="default retries of failed jobs")
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
    p.add_argument("--key", help="uniqueness key")
    broker_option(p)
    p.set_defaults(func=_cmd_enqueue)

    p = sub.add_parser("status", help="print a job's record as JSON")
    p.add_argument("job_id", metavar="JOB_ID")
    broker_option(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("queues", help="table of every queue's job counts")
    p.add_argument("--watch", action="store_true", help="refresh until interrupted")
    p.add_argument("--interval", type=_seconds, default=1.0, help="refresh interval with --watch")
    broker_option(p)
    p.set_defaults(func=_cmd_queues)

    p = sub.add_parser("dead", help="list, retry or purge dead jobs")
    p.add_argument("action", choices=["list", "retry", "purge"])
    p.add_argument("job_id", nargs="?", metavar="JOB_ID", help="with retry: the dead job to retry")
    p.add_argument("--all", action="store_true", help="with retry: retry every dead job")
    p.add_argument("--queue", help="only this queue")
    p.add_argument("--limit", type=_positive, default=100, help="with list: at most this many")
    broker_option(p)
    p.set_defaults(func=_cmd_dead)

    p = sub.add_parser("schedules", help="table of cluster schedules with next and last runs")
    broker_option(p)
    p.set_defaults(func=_cmd_schedules)

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
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
