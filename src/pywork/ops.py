"""The ops HTTP app: metrics, readiness, liveness and a summary, served next to a worker.

``create_app(...)`` builds an ASGI app (Starlette, ``pywork[http]``)::

    GET /metrics   Prometheus text (OpenMetrics when the scraper asks for it)
    GET /ready     200 "OK" / 500 "DOWN": the health check's verdict, and the worker running
    GET /live      200 "OK" while the event loop answers
    GET /          a JSON summary: worker name, handlers, active executions, health, queues

It is mountable in any ASGI app (``Mount("/ops", app=create_app(...))``). To serve it
from the worker's own event loop, use :class:`OpsServer` (a handle with ``start``/``stop``
and the bound ``port``) or :func:`serve` (a coroutine to run as a task)::

    async with worker, OpsServer(create_app(worker=worker, health=health), port=9000):
        await worker.consume(broker)          # the server stops when the worker does

    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, port=9000, stop=stop))
    ...
    stop.set()                                # or task.cancel(); both stop it cleanly
    await task
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable, Generator, Mapping
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pywork.concurrent import ConcurrentJob
from pywork.middleware._common import missing_extra
from pywork.middleware.health import HealthCheck
from pywork.worker import Worker

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from starlette.applications import Starlette
    from starlette.types import ASGIApp

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "OpsServer", "create_app", "serve"]

#: Loopback only unless told otherwise: the ops endpoints are not meant for the internet.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def create_app(
    *,
    worker: Worker | ConcurrentJob | None = None,
    broker: Any = None,
    health: HealthCheck | None = None,
    registry: CollectorRegistry | None = None,
    ready: Callable[[], bool] | None = None,
    summary: Callable[[], Mapping[str, Any]] | None = None,
    metrics_path: str = "/metrics",
    ready_path: str = "/ready",
    live_path: str = "/live",
) -> Starlette:
    """Build the ops ASGI app (see the module documentation for its routes).

    Args:
        worker: a Worker (or ConcurrentJob) to summarise on ``GET /``; ``/ready`` is
            DOWN while it is not running.
        broker: any object with an async ``stats()`` returning per-queue counts (a
            durable broker); its stats appear under ``"queues"`` on ``GET /``.
        health: the HealthCheck behind ``/ready`` (without one, ready = running).
        registry: the ``prometheus_client.CollectorRegistry`` served on ``/metrics``;
            None for the default registry (or, when ``PROMETHEUS_MULTIPROC_DIR`` is set,
            the multiprocess collector over that directory). Without prometheus_client
            installed ``/metrics`` answers 501.
        ready: an extra readiness condition: ``/ready`` is DOWN while it returns False
            (the supervisor of ``pywork worker --processes N`` passes "every child is up").
        summary: returns extra fields for ``GET /`` (merged after the worker's summary).
        metrics_path, ready_path, live_path: where the three routes are served (as
            go-work's options); each an absolute path, all different and not ``/``.

    Raises:
        ImportError: starlette is not installed (``pip install "pywork[http]"``).
        TypeError: an argument has the wrong type.
        ValueError: a route path is not absolute, is ``/``, or two are the same.
    """
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, PlainTextResponse, Response
        from starlette.routing import Route
    except ImportError as exc:
        raise missing_extra("pywork.ops.create_app", "starlette", "http") from exc
    from pywork import __version__

    if worker is not None and not isinstance(worker, Worker | ConcurrentJob):
        raise TypeError(f"worker must be a pywork.Worker, a ConcurrentJob or None, got {worker!r}")
    if broker is not None and not callable(getattr(broker, "stats", None)):
        raise TypeError(
            f"broker must have an async stats() method (a pywork broker), got {broker!r}"
        )
    if health is not None and not isinstance(health, HealthCheck):
        raise TypeError(f"health must be a pywork.middleware.HealthCheck or None, got {health!r}")
    if ready is not None and not callable(ready):
        raise TypeError(f"ready must be None or a callable returning a bool, got {ready!r}")
    if summary is not None and not callable(summary):
        raise TypeError(f"summary must be None or a callable returning a mapping, got {summary!r}")
    paths = {"metrics_path": metrics_path, "ready_path": ready_path, "live_path": live_path}
    for name, path in paths.items():
        if not isinstance(path, str):
            raise TypeError(f"{name} must be a str such as '/{name[:-5]}', got {path!r}")
        if not path.startswith("/") or path == "/":
            raise ValueError(f"{name} must be an absolute path other than '/', got {path!r}")
    if len(set(paths.values())) != len(paths):
        raise ValueError(f"the route paths must differ, got {paths}")
    scrape = _scraper(registry)
    is_ready = ready

    def metrics(request: Request) -> Response:  # sync: Starlette runs it in a thread
        if scrape is None:
            return PlainTextResponse(
                'prometheus_client is not installed: pip install "pywork[prometheus]"\n',
                status_code=501,
            )
        body, media_type = scrape(request.headers.get("accept", ""))
        return Response(body, media_type=media_type)

    def ready_now() -> bool:
        if health is not None and not health.healthy:
            return False
        if is_ready is not None and not is_ready():
            return False
        return worker is None or _summary(worker)["running"]

    async def ready_route(request: Request) -> Response:
        if ready_now():
            return PlainTextResponse("OK")
        return PlainTextResponse("DOWN", status_code=500)

    async def live(request: Request) -> Response:
        return PlainTextResponse("OK")

    async def index(request: Request) -> Response:
        body: dict[str, Any] = {"pywork": __version__}
        if worker is not None:
            body.update(_summary(worker))
        if summary is not None:
            body.update(summary())
        body["ready"] = ready_now()
        if health is not None:
            snap = health.snapshot()
            body["health"] = {
                "status": snap.status.value,
                "requests": snap.requests,
                "errors": snap.errors,
                "error_share": round(snap.error_share, 6),
            }
        if broker is not None:
            try:
                stats = await broker.stats()
                body["queues"] = {str(name): _plain(counts) for name, counts in stats.items()}
            except Exception as exc:
                body["queues"] = None
                body["broker_error"] = f"{type(exc).__name__}: {exc}"
        return JSONResponse(body)

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route(metrics_path, metrics, methods=["GET"]),
            Route(ready_path, ready_route, methods=["GET"]),
            Route(live_path, live, methods=["GET"]),
        ]
    )


def _summary(worker: Worker | ConcurrentJob) -> dict[str, Any]:
    if isinstance(worker, Worker):
        return {
            "name": worker.name,
            "handlers": worker.handlers,
            "active": worker.active,
            "running": worker.running,
        }
    workers = worker.workers
    return {
        "name": f"ConcurrentJob({worker.job.handler})",
        "handlers": workers[0].handlers if workers else [worker.job.handler],
        "active": sum(w.active for w in workers),
        "running": any(w.running for w in workers),
        "workers": len(workers),
        "max_workers": worker.max_workers,
    }


def _plain(counts: Any) -> Any:
    if dataclasses.is_dataclass(counts) and not isinstance(counts, type):
        return dataclasses.asdict(counts)
    if isinstance(counts, Mapping):
        return dict(counts)
    return counts


def _scraper(
    registry: CollectorRegistry | None,
) -> Callable[[str], tuple[bytes, str]] | None:
    """A function rendering `registry` for an Accept header, or None without prometheus_client."""
    try:
        import prometheus_client
        from prometheus_client.exposition import choose_encoder
    except ImportError:
        if registry is not None:
            raise missing_extra("/metrics", "prometheus_client", "prometheus") from None
        return None
    if registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = prometheus_client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = prometheus_client.REGISTRY
    elif not isinstance(registry, prometheus_client.CollectorRegistry):
        raise TypeError(
            f"registry must be a prometheus_client.CollectorRegistry or None, got {registry!r}"
        )
    source = registry

    def scrape(accept: str) -> tuple[bytes, str]:
        encoder, media_type = choose_encoder(accept)
        return encoder(source), media_type

    return scrape


@cache
def _server_class() -> type[Any]:
    """uvicorn.Server that leaves signals alone and says when it is listening."""
    import uvicorn

    class EmbeddedServer(uvicorn.Server):
        listening: asyncio.Event

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield  # the worker (or the application) owns SIGINT/SIGTERM, not the ops server

        def install_signal_handlers(self) -> None:  # uvicorn < 0.29 calls this instead
            pass

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            self.listening.set()

    return EmbeddedServer


class OpsServer:
    """Serves an ASGI app with uvicorn inside the running event loop; start it, stop it.

    The socket is bound in :meth:`start`, so ``port=0`` picks a free port, read back
    from :attr:`port`. uvicorn installs no signal handlers and changes no logging
    configuration (its loggers ``uvicorn.*`` propagate to yours).

    Args:
        app: the ASGI app, usually :func:`create_app`'s.
        host: the address to bind; loopback unless told otherwise.
        port: the TCP port; 0 for any free one.
        access_log: log every request on ``uvicorn.access``.
        shutdown_timeout: seconds :meth:`stop` lets open requests finish.

    Use ``async with OpsServer(app, port=9000) as server:`` or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        access_log: bool = False,
        shutdown_timeout: float = 5.0,
    ) -> None:
        if not callable(app):
            raise TypeError(f"app must be an ASGI application, got {app!r}")
        if not isinstance(host, str) or not host:
            raise TypeError(f"host must be a non-empty str such as '127.0.0.1', got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int in 0..65535, got {port!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535 (0 = any free port), got {port!r}")
        if not isinstance(access_log, bool):
            raise TypeError(f"access_log must be a bool, got {access_log!r}")
        if isinstance(shutdown_timeout, bool) or not isinstance(shutdown_timeout, int | float):
            raise TypeError(f"shutdown_timeout must be seconds >= 0, got {shutdown_timeout!r}")
        if shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be seconds >= 0, got {shutdown_timeout!r}")
        self.app = app
        self.host = host
        self.port = port
        self.access_log = access_log
        self.shutdown_timeout = float(shutdown_timeout)
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (the bound port once started)."""
        host = f"[{self.host}]" if _is_ipv6(self.host) else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop` (unless the server failed)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Bind the socket and start serving; returns once the server is listening.

        Raises:
            ImportError: uvicorn is not installed (``pip install "pywork[http]"``).
            OSError: the address cannot be bound (e.g. the port is taken).
            RuntimeError: already started, or the server failed to start.
        """
        try:
            import uvicorn
        except ImportError as exc:
            raise missing_extra("pywork.ops.OpsServer", "uvicorn", "http") from exc
        if self._task is not None:
            raise RuntimeError("this OpsServer was already started; make a new one")
        family = socket.AF_INET6 if _is_ipv6(self.host) else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=self.access_log,
            ws="none",
            lifespan="auto",
            timeout_graceful_shutdown=max(1, round(self.shutdown_timeout)),
        )
        server = _server_class()(config)
        server.listening = listening = asyncio.Event()
        self._server = server
        self._task = task = asyncio.get_running_loop().create_task(self._serve(server, sock))
        waiter = asyncio.ensure_future(listening.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # nobody will call stop(): close it now
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
            raise
        finally:
            waiter.cancel()
        if not listening.is_set():
            await asyncio.gather(task, return_exceptions=True)
            error = task.exception() if not task.cancelled() else None
            raise RuntimeError(f"the ops server on {self.url} failed to start") from error

    @staticmethod
    async def _serve(server: Any, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits the process on a startup failure
            raise RuntimeError(f"uvicorn stopped with exit code {exc.code}") from None
        finally:
            sock.close()

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (up to `shutdown_timeout`), close.

        Idempotent; returns once the server is closed.
        """
        task = self._task
        if task is None or task.done():
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
            return
        self._server.should_exit = True
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self._server.force_exit = True  # stop() itself was cancelled: do not linger
            raise
        except Exception:
            pass  # a failure of the server itself; it is closed either way

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._task else "new"
        return f"<OpsServer {self.url} {state}>"


async def serve(
    app: ASGIApp,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    stop: asyncio.Event | None = None,
    access_log: bool = False,
    shutdown_timeout: float = 5.0,
) -> None:
    """Serve `app` with uvicorn in the current event loop until `stop` is set or the
    task running this is cancelled; then stop cleanly (see :class:`OpsServer`).

    Run it as a task next to the worker::

        task = asyncio.create_task(serve(create_app(worker=worker), port=9000))
        await worker.consume(broker)   # until the worker stops
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    Use :class:`OpsServer` instead to read the port back when you pass ``port=0``.

    Raises:
        ImportError: uvicorn is not installed. Also as :meth:`OpsServer.start`.
    """
    if stop is not None and not isinstance(stop, asyncio.Event):
        raise TypeError(f"stop must be an asyncio.Event or None, got {stop!r}")
    server = OpsServer(
        app, host=host, port=port, access_log=access_log, shutdown_timeout=shutdown_timeout
    )
    await server.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()


def _is_ipv6(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address)
    except ValueError:
        return False
