"""pywork.tracing.inject: the current W3C trace context written into job.headers."""

from __future__ import annotations

import re

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState, use_span

from pywork import Job
from pywork.tracing import inject


def test_inject_writes_the_current_span_as_traceparent_and_keeps_other_headers() -> None:
    provider = TracerProvider()
    job = Job("report", headers={"x-tenant": "acme"})
    with provider.get_tracer("test").start_as_current_span("request") as span:
        inject(job)
    context = span.get_span_context()
    assert job.headers["x-tenant"] == "acme"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", job.headers["traceparent"])
    assert job.headers["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    )
    assert all(isinstance(v, str) for v in job.headers.values())
    # a copy made for a repeated run carries the same trace context
    assert job.copy().headers == job.headers
    provider.shutdown()


def test_inject_carries_tracestate_and_replaces_an_older_context() -> None:
    remote = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "value")]),
    )
    job = Job("report", headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    with use_span(NonRecordingSpan(remote)):
        inject(job)
    assert job.headers["traceparent"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert job.headers["tracestate"] == "vendor=value"


def test_inject_without_a_span_leaves_the_headers_alone() -> None:
    job = Job("report", headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"})
    before = dict(job.headers)
    inject(job)
    assert job.headers == before
