"""Built-in adapters: aggregate logging, Prometheus metrics, OpenTelemetry tracing, health.

Each is a factory with keyword-only options returning an :data:`~pywork.Adapter`::

    worker = Worker(middleware=[
        with_health_check(health),
        with_prometheus(),
        with_aggregate_logger(output=sys.stdout),
        with_tracing(),
    ])

They keep per-execution state in the job's Context, never on themselves, so one
adapter may serve many workers. Their optional dependencies are imported when a
factory is called: ``import pywork.middleware`` works without them, and a factory
whose extra is missing raises ImportError naming it (``pip install "pywork[otel]"``).
"""

from __future__ import annotations

from pywork.middleware.health import HealthCheck, with_health_check
from pywork.middleware.logging import with_aggregate_logger
from pywork.middleware.prometheus import with_prometheus
from pywork.middleware.tracing import with_tracing

__all__ = [
    "HealthCheck",
    "with_aggregate_logger",
    "with_health_check",
    "with_prometheus",
    "with_tracing",
]
