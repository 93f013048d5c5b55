"""Without the extras installed, imports work and each factory names the extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pywork.middleware

# Run in a fresh interpreter where the optional packages cannot be imported.
SCRIPT = textwrap.dedent(
    """
    import asyncio
    import sys
    for name in ("prometheus_client", "opentelemetry", "starlette", "uvicorn"):
        sys.modules[name] = None  # makes `import name` raise ImportError

    import pywork, pywork.middleware, pywork.ops, pywork.tracing
    from pywork import Job
    from pywork.middleware import HealthCheck, with_aggregate_logger, with_health_check

    with_aggregate_logger()
    with_health_check(HealthCheck())
    job = Job("work")
    pywork.tracing.inject(job)  # a no-op without OpenTelemetry
    assert job.headers == {}, job.headers

    factories = {
        "prometheus": lambda: pywork.middleware.with_prometheus(),
        "otel": lambda: pywork.middleware.with_tracing(),
        "http": lambda: pywork.ops.create_app(),
        "http ": lambda: asyncio.run(pywork.ops.OpsServer(lambda *a: None, port=0).start()),
    }
    for extra, factory in factories.items():
        try:
            factory()
        except ImportError as exc:
            print(extra.strip(), "->", exc)
        else:
            raise SystemExit(f"{extra} did not raise ImportError")
    """
)


def test_imports_work_without_extras_and_factories_name_the_extra() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    for line, extra in zip(lines, ("prometheus", "otel", "http", "http"), strict=True):
        assert line.startswith(f"{extra} ->"), line
        assert f'pip install "pywork[{extra}]"' in line, line


def test_all_is_sorted_and_complete() -> None:
    assert pywork.middleware.__all__ == sorted(pywork.middleware.__all__, key=str.lower)
    assert set(pywork.middleware.__all__) == {
        "HealthCheck",
        "with_aggregate_logger",
        "with_health_check",
        "with_prometheus",
        "with_tracing",
    }
    for name in pywork.middleware.__all__:
        assert getattr(pywork.middleware, name).__doc__, name
