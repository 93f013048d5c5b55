"""Per-execution cost of each built-in adapter over a no-op handler, in µs, in one run.

Each figure is ``(t(adapted chain) - t(bare chain)) / N``: the chains are called directly
(a fresh Job and Context per execution, no worker, no task), so the difference is the
adapter's own work. Measured:

- the aggregate logger, for a handler logging 3 lines (compared with the same handler
  without it, whose lines the default logging level drops), writing one JSON line to a
  text stream on /dev/null, and to a ``logging.Logger`` whose StreamHandler writes there;
- Prometheus (a private registry), health (time-window mode), and both together;
- tracing with the no-op tracer, and with the SDK tracer (BatchSpanProcessor, spans
  exported to nowhere);
- all four together.

Each figure is the best of ``--repeat`` runs of ``--n`` executions. Targets, from the
issue: Prometheus + health under 10 µs together, the aggregate logger under 15 µs for
a handler that logs 3 lines.

Run it with ``python bench/middleware.py [--n 20000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from prometheus_client import CollectorRegistry

from pywork import Adapter, Context, Handler, Job, adapt
from pywork.middleware import (
    HealthCheck,
    with_aggregate_logger,
    with_health_check,
    with_prometheus,
    with_tracing,
)

TARGET_PROMETHEUS_HEALTH_US = 10.0
TARGET_AGGREGATE_US = 15.0


async def noop(job: Job) -> None:
    """A no-op async handler."""


async def logs_three_lines(job: Job) -> None:
    """A handler logging three lines through its context's logger."""
    log = job.ctx.logger  # type: ignore[union-attr]
    log.info("charging %s", job.id)
    log.debug("gateway answered in %d ms", 12)
    log.info("done")


class Nowhere(SpanExporter):
    """Exports spans to nowhere: the SDK's own cost, without a collector."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def per_execution(chain: Handler, n: int) -> float:
    """Seconds per execution of `chain`, each with a fresh Job and Context."""
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        job = Job("bench")
        job.ctx = Context(job)
        await chain(job)
    return (time.perf_counter() - t0) / n


async def cost(chain: Handler, bare: Handler, n: int, repeat: int) -> tuple[float, float]:
    """(best seconds per execution of `chain`, of `bare`), measured alternately so that
    a busy machine slows both alike."""
    with_adapter: list[float] = []
    without: list[float] = []
    for _ in range(repeat):
        without.append(await per_execution(bare, n))
        with_adapter.append(await per_execution(chain, n))
    return min(with_adapter), min(without)


async def main(n: int, repeat: int, devnull: IO[str]) -> None:
    to_devnull = logging.getLogger("bench.aggregate")
    to_devnull.addHandler(logging.StreamHandler(devnull))
    to_devnull.setLevel(logging.INFO)
    to_devnull.propagate = False
    provider = TracerProvider()
    # a queue long enough for a whole measurement: dropped spans would flatter the SDK
    provider.add_span_processor(BatchSpanProcessor(Nowhere(), max_queue_size=4 * n))
    prometheus = with_prometheus(registry=CollectorRegistry())
    health = with_health_check(HealthCheck())
    aggregate = with_aggregate_logger(output=devnull)

    cases: list[tuple[str, Handler, Sequence[Adapter], float | None]] = [
        (
            "aggregate logger, 3 lines -> text stream",
            logs_three_lines,
            [aggregate],
            TARGET_AGGREGATE_US,
        ),
        (
            "aggregate logger, 3 lines -> logging.Logger",
            logs_three_lines,
            [with_aggregate_logger(output=to_devnull)],
            None,
        ),
        ("prometheus", noop, [prometheus], None),
        ("health", noop, [health], None),
        ("prometheus + health", noop, [prometheus, health], TARGET_PROMETHEUS_HEALTH_US),
        ("tracing, no-op tracer", noop, [with_tracing(tracer=trace.NoOpTracer())], None),
        ("tracing, SDK tracer (batch, no export)", noop, [with_tracing(tracer=provider)], None),
        (
            "all four (SDK tracer), 3 lines",
            logs_three_lines,
            [health, prometheus, aggregate, with_tracing(tracer=provider)],
            None,
        ),
    ]
    bare: dict[Handler, Handler] = {h: adapt(h) for h in (noop, logs_three_lines)}
    for chain in bare.values():  # warm up
        await per_execution(chain, min(n, 2000))
    print(f"pywork middleware cost per execution: n={n}, best of {repeat}")
    print(f"Python {platform.python_version()} on {platform.machine()} ({sys.platform})")
    print(f"{'adapter':<46} {'cost':>8}  {'(chain':>8} {'- bare)':<9} target")
    for name, handler, adapters, target in cases:
        chain = adapt(handler, *adapters)
        await per_execution(chain, min(n, 2000))  # warm up: first labels, first spans
        total, base = await cost(chain, bare[handler], n, repeat)
        extra = (total - base) * 1e6
        verdict = ""
        if target is not None:
            verdict = f"< {target:g} µs {'ok' if extra < target else 'MISSED'}"
        print(f"{name:<46} {extra:6.2f} µs  {total * 1e6:6.2f} - {base * 1e6:5.2f}  {verdict}")
    provider.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="executions per measurement")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (best is kept)")
    args = parser.parse_args()
    with open(os.devnull, "w") as devnull:
        asyncio.run(main(args.n, args.repeat, devnull))
