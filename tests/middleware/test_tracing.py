"""with_tracing on the OpenTelemetry SDK (in-memory exporter): spans, attributes, linkage."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pywork import TRACING_CONTEXT, BadRequest, Job, Status, Worker
from pywork.middleware import with_aggregate_logger, with_tracing
from pywork.tracing import inject


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    # A provider of our own, passed as tracer=: the global one can be set once per process
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_one_consumer_span_per_run_with_messaging_attributes(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    worker = Worker(middleware=[with_tracing(tracer=provider)])
    seen: list[object] = []

    @worker.handler("email.send")
    async def send(job: Job) -> None:
        seen.append(job.ctx[TRACING_CONTEXT])  # type: ignore[index]

    async with worker:
        job = Job("email.send", queue="mail")
        await worker.perform(job, wait=True)
    [span] = exporter.get_finished_spans()
    assert span.name == "job-email.send"
    assert span.kind is SpanKind.CONSUMER
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "pywork"
    assert dict(span.attributes or {}) == {
        "messaging.system": "pywork",
        "messaging.operation.type": "process",
        "messaging.destination.name": "mail",
        "messaging.message.id": job.id,
        "pywork.handler": "email.send",
        "pywork.attempt": 1,
        "pywork.status": 200,
    }
    assert span.status.status_code is StatusCode.UNSET
    # the span was at ctx[TRACING_CONTEXT] during the run
    [current] = seen
    assert current.get_span_context().span_id == span.context.span_id  # type: ignore[attr-defined]


async def test_error_statuses_mark_the_span_as_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    worker = Worker(middleware=[with_tracing(tracer=provider, operation_prefix="")])

    @worker.handler("crash")
    async def crash(job: Job) -> None:
        raise RuntimeError("disk full")

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        await asyncio.sleep(10)

    @worker.handler("bad")
    async def bad(job: Job) -> None:
        raise BadRequest("no address")

    async with worker:
        for name in ("crash", "slow", "bad"):
            await worker.perform(Job(name, timeout=0.05), wait=True)
    [crashed] = spans_named(exporter, "crash")
    assert crashed.status.status_code is StatusCode.ERROR
    assert crashed.status.description == "INTERNAL_ERROR: disk full"
    assert crashed.attributes is not None
    assert crashed.attributes["pywork.status"] == 500
    assert crashed.attributes["error.type"] == "RuntimeError"
    [event] = crashed.events
    assert event.name == "exception"
    [slow_span] = spans_named(exporter, "slow")
    assert slow_span.status.status_code is StatusCode.ERROR
    assert slow_span.attributes is not None and slow_span.attributes["pywork.status"] == 408
    # a 4xx other than 408 is the job's fault, not the worker's: not an error span
    [bad_span] = spans_named(exporter, "bad")
    assert bad_span.status.status_code is StatusCode.UNSET
    assert bad_span.attributes is not None and bad_span.attributes["pywork.status"] == 400


async def test_cancelled_runs_end_their_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    worker = Worker(middleware=[with_tracing(tracer=provider)])
    started = asyncio.Event()

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        started.set()
        await asyncio.sleep(10)

    async with worker:
        execution = await worker.perform(Job("slow"))
        await asyncio.wait_for(started.wait(), 5)
        execution.cancel()
        await execution.wait(5)
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["pywork.status"] == 499
    assert span.status.status_code is StatusCode.UNSET


async def test_inject_then_perform_continues_the_producers_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    # Given a job made while a web request's span is current, its context injected
    tracer = provider.get_tracer("web")
    job = Job("report")
    with tracer.start_as_current_span("GET /reports") as request_span:
        inject(job)
    assert "traceparent" in job.headers
    # When a worker performs it later, outside that span
    assert not trace.get_current_span().get_span_context().is_valid
    worker = Worker(middleware=[with_tracing(tracer=provider)])

    @worker.handler("report")
    async def report(job: Job) -> None:
        with tracer.start_as_current_span("render"):
            pass

    async with worker:
        await worker.perform(job, wait=True)
    # Then the job's span is a child of the request span, and the handler's span of the job's
    [job_span] = spans_named(exporter, "job-report")
    [render] = spans_named(exporter, "render")
    request = request_span.get_span_context()
    assert job_span.context is not None and job_span.parent is not None
    assert job_span.context.trace_id == request.trace_id
    assert job_span.parent.span_id == request.span_id
    assert job_span.parent.is_remote
    assert render.parent is not None and render.parent.span_id == job_span.context.span_id


async def test_without_headers_the_span_is_a_child_of_the_performers_context(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("app")
    worker = Worker(middleware=[with_tracing(tracer=provider)])
    worker.register("work", lambda job: None)
    async with worker:
        with tracer.start_as_current_span("batch") as batch:
            await worker.perform(Job("work"), wait=True)
    [span] = spans_named(exporter, "job-work")
    assert span.parent is not None
    assert span.parent.span_id == batch.get_span_context().span_id


async def test_headers_without_a_trace_do_not_break_the_current_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracer = provider.get_tracer("app")
    worker = Worker(middleware=[with_tracing(tracer=provider)])
    worker.register("work", lambda job: None)
    async with worker:
        with tracer.start_as_current_span("batch") as batch:
            await worker.perform(Job("work", headers={"x-tenant": "acme"}), wait=True)
    [span] = spans_named(exporter, "job-work")
    assert span.parent is not None
    assert span.parent.span_id == batch.get_span_context().span_id


async def test_inject_is_a_no_op_without_a_current_span() -> None:
    job = Job("work", headers={"x-tenant": "acme"})
    inject(job)
    assert job.headers == {"x-tenant": "acme"}
    with pytest.raises(TypeError, match="Job"):
        inject({"handler": "work"})  # type: ignore[arg-type]


async def test_aggregate_log_carries_the_trace_id(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    out = io.StringIO()
    # the logger inside the span, as well as outside it, finds the span in the context
    for middleware in (
        [with_aggregate_logger(output=out), with_tracing(tracer=provider)],
        [with_tracing(tracer=provider), with_aggregate_logger(output=out)],
    ):
        worker = Worker(middleware=middleware)
        worker.register("work", lambda job: None)
        async with worker:
            await worker.perform(Job("work"), wait=True)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    spans = exporter.get_finished_spans()
    assert [r["requestID"] for r in records] == [
        f"{s.context.trace_id:032x}" for s in spans if s.context is not None
    ]


async def test_a_no_op_tracer_still_stores_a_span() -> None:
    worker = Worker(middleware=[with_tracing(tracer=trace.NoOpTracer())])
    seen: list[object] = []
    worker.register("work", lambda job: seen.append(job.ctx and job.ctx.get(TRACING_CONTEXT)))
    async with worker:
        execution = await worker.perform(Job("work"), wait=True)
    assert execution.status is Status.SUCCESS
    [span] = seen
    assert not span.is_recording()  # type: ignore[attr-defined]


def test_invalid_arguments_are_rejected() -> None:
    with pytest.raises(TypeError, match="tracer"):
        with_tracing(tracer="jaeger")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="operation_prefix"):
        with_tracing(operation_prefix=None)  # type: ignore[arg-type]
