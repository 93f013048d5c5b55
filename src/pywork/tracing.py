"""Trace context propagation for jobs: :func:`inject` the current trace into ``job.headers``.

Call ``inject(job)`` where a job is produced (a durable broker does it on enqueue) and
the consumer's ``with_tracing`` span continues that trace, e.g. a job enqueued while a
web request is handled shows up in the request's trace. It is a cheap no-op when
OpenTelemetry is not installed or there is no current span, so it costs nothing to
call unconditionally.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from pywork.job import Job

__all__ = ["inject"]

# Resolved on first use: None = not yet, False = OpenTelemetry is not installed.
_inject: Callable[[MutableMapping[str, str]], None] | bool | None = None


def _load() -> Callable[[MutableMapping[str, str]], None] | bool:
    global _inject
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        _inject = False
        return False
    get_current_span = trace.get_current_span
    propagate_inject = propagate.inject

    def inject_current(carrier: MutableMapping[str, str]) -> None:
        if get_current_span().get_span_context().is_valid:
            propagate_inject(carrier)

    _inject = inject_current
    return inject_current


def inject(job: Job) -> None:
    """Write the current trace context into ``job.headers`` (W3C ``traceparent``/``tracestate``).

    It uses OpenTelemetry's global propagator (W3C Trace Context and Baggage unless
    configured otherwise, e.g. with ``OTEL_PROPAGATORS``), the same one ``with_tracing``
    extracts with. Headers a propagator writes replace the job's headers of the same
    name; other headers are kept. Nothing happens when opentelemetry-api is not
    installed or no span is current.

    Raises:
        TypeError: `job` is not a Job.
    """
    if not isinstance(job, Job):
        raise TypeError(f"inject expects a pywork.Job, got {job!r}")
    writer: Any = _inject
    if writer is None:
        writer = _load()
    if writer is not False:
        writer(job.headers)
