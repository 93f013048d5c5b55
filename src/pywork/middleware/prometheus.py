"""Prometheus metrics per handler and status code (``pywork[prometheus]``).

Metrics (names prefixed ``<namespace>_<subsystem>_``; by default ``pywork_``):

============================  =========  =============  ======================================
name                          type       labels         what
============================  =========  =============  ======================================
``requests_total``            counter    code, handler  finished executions; code ``"200"``…
``request_duration_seconds``  histogram  handler        execution latency
``request_size_bytes``        summary    handler        ``ctx[REQUEST_SIZE]``, when set
``response_size_bytes``       summary    handler        ``ctx[RESPONSE_SIZE]``, when set
``in_progress``               gauge      handler        executions running now
============================  =========  =============  ======================================
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pywork.job import REQUEST_SIZE, RESPONSE_SIZE, Job
from pywork.middleware._common import final_status, mark, missing_extra
from pywork.types import Adapter, Handler

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["with_prometheus"]

_NAME_PART = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(eq=False)
class _Metrics:
    """The collectors of one (registry, namespace, subsystem), and their labelled children."""

    requests: Any
    duration: Any
    request_size: Any
    response_size: Any
    in_progress: Any
    # handler -> (in_progress, duration, request_size, response_size) children
    handlers: dict[str, tuple[Any, Any, Any, Any]] = field(default_factory=dict)
    # (code, handler) -> requests counter child
    codes: dict[tuple[int, str], Any] = field(default_factory=dict)

    def children(self, handler: str) -> tuple[Any, Any, Any, Any]:
        found = self.handlers.get(handler)
        if found is None:  # labels() is thread-safe; a race makes the same child twice
            found = self.handlers[handler] = (
                self.in_progress.labels(handler=handler),
                self.duration.labels(handler=handler),
                self.request_size.labels(handler=handler),
                self.response_size.labels(handler=handler),
            )
        return found

    def counter(self, code: int, handler: str) -> Any:
        key = (code, handler)
        found = self.codes.get(key)
        if found is None:
            found = self.codes[key] = self.requests.labels(code=str(code), handler=handler)
        return found


# Collectors made by pywork, per registry, so that a second with_prometheus() on the same
# registry reuses them instead of failing with "Duplicated timeseries".
_registered: weakref.WeakKeyDictionary[Any, dict[tuple[str, str], _Metrics]] = (
    weakref.WeakKeyDictionary()
)
_registered_lock = threading.Lock()


def _metrics(registry: CollectorRegistry, namespace: str, subsystem: str) -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram, Summary

    with _registered_lock:
        per_registry = _registered.setdefault(registry, {})
        found = per_registry.get((namespace, subsystem))
        if found is not None:
            return found
        common: dict[str, Any] = {
            "namespace": namespace,
            "subsystem": subsystem,
            "registry": registry,
        }
        made: list[Any] = []
        try:
            requests = Counter(
                "requests", "Executions finished, by status code and handler.",
                ["code", "handler"], **common,
            )  # fmt: skip
            made.append(requests)
            duration = Histogram(
                "request_duration_seconds", "Execution latency in seconds.", ["handler"], **common
            )
            made.append(duration)
            request_size = Summary(
                "request_size_bytes", "Size of a job's input, when the handler sets it.",
                ["handler"], **common,
            )  # fmt: skip
            made.append(request_size)
            response_size = Summary(
                "response_size_bytes", "Size of a job's output, when the handler sets it.",
                ["handler"], **common,
            )  # fmt: skip
            made.append(response_size)
            in_progress = Gauge(
                "in_progress", "Executions running now.", ["handler"],
                multiprocess_mode="livesum", **common,
            )  # fmt: skip
            made.append(in_progress)
        except ValueError as exc:
            for collector in made:  # leave the registry as it was
                registry.unregister(collector)
            prefix = "_".join(p for p in (namespace, subsystem) if p)
            raise ValueError(
                f"with_prometheus cannot register its metrics on {registry!r}: {exc}. "
                f"Another collector already uses a {prefix}_* name; pass another "
                "namespace=/subsystem= or registry="
            ) from exc
        metrics = _Metrics(requests, duration, request_size, response_size, in_progress)
        per_registry[(namespace, subsystem)] = metrics
        return metrics


def with_prometheus(
    *,
    namespace: str = "pywork",
    subsystem: str = "",
    ignore: Iterable[str] = (),
    registry: CollectorRegistry | None = None,
) -> Adapter:
    """Adapter exporting Prometheus metrics of every execution.

    A counter ``requests_total{code,handler}`` (``code`` = ``str(int(status))``), a
    histogram ``request_duration_seconds{handler}``, summaries
    ``request_size_bytes{handler}`` / ``response_size_bytes{handler}`` (observed when
    the run's ctx holds ``REQUEST_SIZE`` / ``RESPONSE_SIZE``) and a gauge
    ``in_progress{handler}``, named ``<namespace>_<subsystem>_<name>``. Cancelled runs
    are counted with code 499.

    Calling it again with the same registry, namespace and subsystem reuses the
    collectors already registered (one process may build several workers); collectors
    of the same names registered by anyone else make it raise ValueError.

    Args:
        namespace: the metric name prefix.
        subsystem: a second prefix ("" for none).
        ignore: handler names passed through uninstrumented.
        registry: a ``prometheus_client.CollectorRegistry``; None for the default
            ``prometheus_client.REGISTRY``.

    Raises:
        ImportError: prometheus_client is not installed (``pip install "pywork[prometheus]"``).
        TypeError, ValueError: an argument is invalid, or the names are taken.
    """
    try:
        import prometheus_client
    except ImportError as exc:
        raise missing_extra("with_prometheus", "prometheus_client", "prometheus") from exc
    for label, value in (("namespace", namespace), ("subsystem", subsystem)):
        if not isinstance(value, str):
            raise TypeError(f"{label} must be a str, got {value!r}")
        if value and not _NAME_PART.fullmatch(value):
            raise ValueError(
                f"{label} must be a Prometheus name part ([a-zA-Z_:][a-zA-Z0-9_:]*), got {value!r}"
            )
    if isinstance(ignore, str | bytes) or not isinstance(ignore, Iterable):
        raise TypeError(f"ignore must be an iterable of handler names (not a str), got {ignore!r}")
    skipped = frozenset(ignore)
    if not all(isinstance(name, str) for name in skipped):
        raise TypeError(f"ignore must hold handler names (str), got {sorted(map(repr, skipped))}")
    if registry is None:
        registry = prometheus_client.REGISTRY
    elif not isinstance(registry, prometheus_client.CollectorRegistry):
        raise TypeError(
            f"registry must be a prometheus_client.CollectorRegistry or None, got {registry!r}"
        )
    metrics = _metrics(registry, namespace, subsystem)
    children = metrics.children
    counter = metrics.counter
    clock = time.perf_counter

    def adapter(inner: Handler) -> Handler:
        async def prometheus(job: Job) -> None:
            handler = job.handler
            if handler in skipped:
                await inner(job)
                return
            in_progress, duration, request_size, response_size = children(handler)
            in_progress.inc()
            t0 = clock()
            exc: BaseException | None = None
            try:
                await inner(job)
            except BaseException as raised:
                exc = raised
                raise
            finally:
                duration.observe(clock() - t0)
                in_progress.dec()
                ctx = job.ctx
                if ctx is not None:
                    counter(final_status(ctx, exc).value, handler).inc()
                    size = ctx.get(REQUEST_SIZE)
                    if size is not None:
                        _observe(request_size, size)
                    size = ctx.get(RESPONSE_SIZE)
                    if size is not None:
                        _observe(response_size, size)

        return prometheus

    return mark(adapter, "prometheus", registry)


def _observe(summary: Any, size: Any) -> None:
    """Observe a size a handler stored; a value that is not a number is ignored."""
    if isinstance(size, int | float) and not isinstance(size, bool):
        summary.observe(size)
