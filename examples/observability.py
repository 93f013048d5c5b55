"""Observability end to end: go-work's own end-to-end test, in Python.

A ConcurrentJob (``PerformWith.EVERY_SYNC``, 50 workers, a 50 ms on-ramp) runs a
``report`` job through three adapters: a health check, Prometheus metrics and the
aggregate logger. The ops app (``pywork.ops``) is served on a free loopback port in the
same event loop; after ``--seconds`` an HTTP client (httpx) reads ``/ready`` and ``/``
while the workers run, stops them, then scrapes ``/metrics`` and prints the metrics.

Every tenth worker's job fails (500), so the scraped counters show two status codes,
the health check stays OK (its threshold is 50 %), and one aggregated JSON log record
was written per execution.

Run it with ``python examples/observability.py [--seconds 3] [--port 0]`` (httpx comes
with ``pip install "pywork[dev]"``).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from pywork import ConcurrentJob, InternalError, Job, PerformWith, Worker
from pywork.middleware import (
    HealthCheck,
    with_aggregate_logger,
    with_health_check,
    with_prometheus,
)
from pywork.ops import OpsServer, create_app

METRICS = ("pywork_requests_total", "pywork_request_duration_seconds_count", "pywork_in_progress")


async def run(seconds: float, port: int) -> None:
    """Run the scenario for `seconds`, serving the ops app on `port` (0 = any free one)."""
    registry = CollectorRegistry()  # a private registry: only this example's metrics
    health = HealthCheck(error_percentage=0.5, window=60.0, min_requests=5, tick=0.0)
    logs = io.StringIO()  # one JSON line per execution
    middleware = [
        with_aggregate_logger(output=logs),
        with_prometheus(registry=registry),
        with_health_check(health),
    ]
    cj = ConcurrentJob(
        Job("report"),
        worker_factory=lambda: Worker(middleware=middleware),
        perform_with=PerformWith.EVERY_SYNC,
        perform_every=0.25,
        max_workers=50,
        start_interval=0.05,
    )
    runs = 0

    async def report(job: Job) -> None:
        """The periodic job: two log lines, a little work; every tenth worker fails."""
        nonlocal runs
        runs += 1
        ctx = job.ctx
        assert ctx is not None and ctx.worker_number is not None
        ctx.logger.info("report for worker %d", ctx.worker_number)
        await asyncio.sleep(0.002)
        if ctx.worker_number % 10 == 0:
            raise InternalError(f"worker {ctx.worker_number} lost its database")
        ctx.logger.debug("report written")
        ctx["comment"] = "ok"

    cj.register("report", report)
    app = create_app(worker=cj, health=health, registry=registry)
    async with OpsServer(app, port=port) as server:
        print(f"ops app on {server.url}")
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            await cj.start()
            try:
                await asyncio.sleep(seconds)
                ready = await client.get("/ready")
                summary = (await client.get("/")).json()
            finally:
                await cj.stop()
            scraped = await client.get("/metrics")

    print(f"GET /ready -> {ready.status_code} {ready.text}")
    print(
        f"GET / -> {summary['name']}: {summary['workers']} workers, "
        f"health {summary['health']['status']} "
        f"({summary['health']['errors']} errors in {summary['health']['requests']} requests)"
    )
    print(f"GET /metrics -> {scraped.status_code}, {len(scraped.content)} bytes; pywork metrics:")
    total = 0
    for line in scraped.text.splitlines():
        if line.startswith(METRICS):
            print(f"  {line}")
    for family in text_string_to_metric_families(scraped.text):
        for sample in family.samples:
            if sample.name == "pywork_requests_total":
                total += int(sample.value)
    records = [json.loads(line) for line in logs.getvalue().splitlines()]
    print(f"executions started: {runs}")
    print(f"executions counted by Prometheus: {total}")
    print(f"aggregated log records: {len(records)}")
    failed = next((r for r in records if r["status"] == 500), None)
    if failed is not None:
        print(f"a failed run's log record: {json.dumps(failed)}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run the scenario; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to run (default 3)")
    parser.add_argument("--port", type=int, default=0, help="ops app port (default: a free one)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be > 0, got {args.seconds}")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    asyncio.run(run(args.seconds, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
