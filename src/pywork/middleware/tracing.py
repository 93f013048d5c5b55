"""OpenTelemetry tracing: one CONSUMER span per execution (``pywork[otel]``).

The span continues the producer's trace when ``job.headers`` carries a W3C trace
context (``traceparent``/``tracestate``, written by :func:`pywork.tracing.inject`,
which durable brokers call on enqueue); otherwise it is a child of the context current
where the job was performed. It is current while the handler runs, so the handler's own
spans are its children, and it is stored at ``job.ctx[TRACING_CONTEXT]``.

Attributes follow OpenTelemetry's messaging semantic conventions where they apply:

==============================  ==========================================
``messaging.system``            ``"pywork"``
``messaging.operation.type``    ``"process"``
``messaging.destination.name``  the job's queue
``messaging.message.id``        the job id
``pywork.handler``              the handler name
``pywork.attempt``              1 on the first run; durable retries count up
``pywork.worker_number``        set by ConcurrentJob (when set)
``pywork.status``               the final status code, e.g. 200
``error.type``                  the exception type (or status name) when the status is an error
==============================  ==========================================

The span status is ERROR when the final status ``is_error`` (TIMEOUT, 5xx), otherwise
left UNSET; an exception that ended the handler is recorded as a span event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pywork.job import TRACING_CONTEXT, Context, Job
from pywork.middleware._common import final_status, missing_extra
from pywork.types import Adapter, Handler

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

__all__ = ["with_tracing"]

#: The instrumentation scope name of pywork's spans.
TRACER_NAME = "pywork"


def with_tracing(
    *,
    tracer: Tracer | TracerProvider | None = None,
    operation_prefix: str = "job-",
) -> Adapter:
    """Adapter running every execution in an OpenTelemetry span of kind CONSUMER.

    The span is named ``operation_prefix + handler``, is a child of the trace context
    found in ``job.headers`` when there is one, and is stored at
    ``job.ctx[TRACING_CONTEXT]``. See the module documentation for its attributes.

    Args:
        tracer: an OpenTelemetry ``Tracer``, or a ``TracerProvider`` to get one from;
            None uses the global provider (``opentelemetry.trace.set_tracer_provider``),
            also when it is set after this call.
        operation_prefix: the span name prefix.

    Raises:
        ImportError: opentelemetry-api is not installed (``pip install "pywork[otel]"``).
        TypeError: an argument has the wrong type.
    """
    try:
        from opentelemetry import context as otel_context
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, StatusCode
    except ImportError as exc:
        raise missing_extra("with_tracing", "opentelemetry-api", "otel") from exc
    from pywork import __version__

    if not isinstance(operation_prefix, str):
        raise TypeError(f"operation_prefix must be a str, got {operation_prefix!r}")
    if tracer is None:
        tracer = trace.get_tracer(TRACER_NAME, __version__)
    elif isinstance(tracer, trace.TracerProvider):
        tracer = tracer.get_tracer(TRACER_NAME, __version__)
    elif not isinstance(tracer, trace.Tracer):
        raise TypeError(
            "tracer must be None, an opentelemetry.trace.Tracer or a TracerProvider, "
            f"got {tracer!r}"
        )
    start_span = tracer.start_span
    extract = propagate.extract
    get_current_span = trace.get_current_span
    set_span_in_context = trace.set_span_in_context
    attach = otel_context.attach
    detach = otel_context.detach
    consumer = SpanKind.CONSUMER
    error_code = StatusCode.ERROR

    def parent_of(job: Job) -> Any:
        """The producer's context from the job's headers, or None (use the current one)."""
        if not job.headers:
            return None
        parent = extract(job.headers)
        if not get_current_span(parent).get_span_context().is_valid:
            return None
        return parent

    def finish(span: Any, ctx: Context, exc: BaseException | None) -> None:
        status = final_status(ctx, exc)
        span.set_attribute("pywork.status", status.value)
        error = exc if exc is not None else ctx.error
        if isinstance(error, Exception):
            span.record_exception(error)
        if status.is_error:
            span.set_attribute(
                "error.type", type(error).__qualname__ if error is not None else status.name
            )
            detail = f": {error}" if isinstance(error, Exception) and str(error) else ""
            span.set_status(error_code, f"{status.name}{detail}")

    def adapter(inner: Handler) -> Handler:
        async def tracing(job: Job) -> None:
            ctx = job.ctx
            if ctx is None:  # called outside a worker
                ctx = job.ctx = Context(job)
            parent = parent_of(job)
            attributes: dict[str, Any] = {
                "messaging.system": "pywork",
                "messaging.operation.type": "process",
                "messaging.destination.name": job.queue,
                "messaging.message.id": job.id,
                "pywork.handler": job.handler,
                "pywork.attempt": ctx.attempt,
            }
            if ctx.worker_number is not None:
                attributes["pywork.worker_number"] = ctx.worker_number
            span = start_span(
                operation_prefix + job.handler,
                context=parent,
                kind=consumer,
                attributes=attributes,
            )
            ctx.set(TRACING_CONTEXT, span)
            token = attach(set_span_in_context(span, parent))
            exc: BaseException | None = None
            try:
                await inner(job)
            except BaseException as raised:
                exc = raised
                raise
            finally:
                detach(token)
                if span.is_recording():
                    finish(span, ctx, exc)
                span.end()

        return tracing

    return adapter
