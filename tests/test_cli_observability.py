"""``pywork worker`` in production: metrics counted once, readiness, JSON logs, blocked loops.

Each test runs the real console script in a subprocess on a SQLite file.
"""

from __future__ import annotations

import json
import signal
import textwrap
from pathlib import Path

import httpx

from tests.servers import free_port
from tests.test_cli import Cli, Procs, stop_all, wait_until

__all__ = ["stop_all"]  # the fixture, used by name

HANDLERS = """
@worker.handler("echo")
async def echo(job):
    (out / job.id).write_text("done")

@worker.handler("boom", max_retries=0)
async def boom(job):
    (out / job.id).write_text("done")
    raise RuntimeError("boom")
"""

INSTRUMENTED = (
    textwrap.dedent(
        """
        import os, pathlib
        from pywork import Worker
        from pywork.middleware import HealthCheck, with_health_check, with_prometheus

        health = HealthCheck(error_percentage=0.0, min_requests=1, tick=0)
        worker = Worker(
            name="instrumented", middleware=[with_prometheus(), with_health_check(health)]
        )
        out = pathlib.Path(os.environ["PYWORK_TEST_OUT"])
        """
    )
    + HANDLERS
)

PLAIN = (
    textwrap.dedent(
        """
        import os, pathlib
        from pywork import Worker

        worker = Worker(name="plain")
        out = pathlib.Path(os.environ["PYWORK_TEST_OUT"])
        """
    )
    + HANDLERS
)

BLOCKING = textwrap.dedent(
    """
    import os, pathlib, time
    from pywork import Worker

    worker = Worker(name="blocking")
    out = pathlib.Path(os.environ["PYWORK_TEST_OUT"])

    @worker.handler("block")
    async def block(job):
        with open(out / "runs", "a") as runs:
            runs.write(f"{os.getpid()}\\n")
        time.sleep(8)
    """
)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return ""


def stop(proc: Procs, index: int = -1) -> str:
    worker = proc[index]
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    return output


def test_http_counts_a_run_once_and_ready_uses_the_workers_health_check(
    tmp_path: Path, stop_all: Procs
) -> None:
    # Given a worker with its own with_prometheus() and with_health_check(...)
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'obs.db'}")
    (tmp_path / "obsapp.py").write_text(INSTRUMENTED)
    job_id = cli.enqueue("echo", {})
    port = free_port()
    stop_all.append(cli.start("worker", "obsapp:worker", "--http", f"127.0.0.1:{port}"))
    wait_until(lambda: (cli.out / job_id).exists(), 30, "the job to run")
    # When /metrics is scraped, then the run is counted once
    wait_until(
        lambda: metric(scrape(port), "pywork_requests_total", handler="echo") > 0, 30, "a count"
    )
    text = scrape(port)
    assert metric(text, "pywork_requests_total", handler="echo", code="200") == 1.0, text
    assert metric(text, "pywork_request_duration_seconds_count", handler="echo") == 1.0, text
    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
    assert ready.status_code == 200
    # And /ready follows the worker's own HealthCheck (error_percentage=0: one error trips it)
    failing = cli.enqueue("boom", {})
    wait_until(lambda: (cli.out / failing).exists(), 30, "the failing job to run")
    wait_until(lambda: cli.status(failing)["state"] == "dead", 30, "the failing job to die")
    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
    assert (ready.status_code, ready.text) == (500, "DOWN")
    stop(stop_all)


def test_health_flags_configure_the_check_the_cli_adds(tmp_path: Path, stop_all: Procs) -> None:
    # Given a worker without instrumentation, served with health flags
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'flags.db'}")
    (tmp_path / "plainapp.py").write_text(PLAIN)
    ids = [cli.enqueue("boom", {}) for _ in range(5)] + [cli.enqueue("echo", {})]
    port = free_port()
    args = ["--health-error-percentage", "0.5", "--health-window", "60"]
    stop_all.append(cli.start("worker", "plainapp:worker", "--http", f"127.0.0.1:{port}", *args))
    # When 5 of its 6 runs fail (each counted once by the instrumentation the CLI adds)
    wait_until(
        lambda: metric(scrape(port), "pywork_requests_total") == 6.0, 30, "the 6 runs counted"
    )
    assert all((cli.out / i).exists() for i in ids)
    # Then /ready is DOWN: more than 50 % errors
    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
    assert (ready.status_code, ready.text) == (500, "DOWN")
    stop(stop_all)
    # And the flags are checked
    for flag, value in (("--health-error-percentage", "2"), ("--health-window", "0")):
        done = cli.run("worker", "plainapp:worker", flag, value)
        assert done.returncode == 2 and flag in done.stderr, done.stderr


def test_json_log_format_applies_to_every_line(tmp_path: Path, stop_all: Procs) -> None:
    # Given a worker logging JSON that runs a failing job
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'json.db'}")
    job_id = cli.enqueue("reject", {})
    stop_all.append(cli.start("worker", "cliapp:worker", "--log-format", "json"))
    wait_until(lambda: cli.status(job_id)["state"] == "dead", 30, "the job to be dead")
    output = stop(stop_all)
    # Then every line is one JSON object, the banner first
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert "queues=default" in lines[0]["message"] and lines[0]["logger"] == "pywork.cli"
    warned = [entry for entry in lines if entry.get("job_id") == job_id]
    assert len(warned) == 1 and warned[0]["level"] == "warning", warned
    assert warned[0]["handler"] == "reject" and warned[0]["status"] == 400
    assert warned[0]["attempt"] == 1


def test_a_blocking_async_handler_runs_once_across_processes(
    tmp_path: Path, stop_all: Procs
) -> None:
    # Given an async handler that blocks its event loop for 8 s, two processes, a 3 s lease
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'block.db'}")
    (tmp_path / "blockapp.py").write_text(BLOCKING)
    job_id = cli.enqueue("block", {})
    supervisor = cli.start("worker", "blockapp:worker", "--processes", "2", "--lease", "3")
    stop_all.append(supervisor)
    # When it has run to its end
    wait_until(lambda: cli.status(job_id)["state"] == "succeeded", 60, "the job to succeed")
    # Then it ran once, succeeded, and the watchdog said where the loop was stuck
    runs = (cli.out / "runs").read_text().split()
    assert len(runs) == 1, runs
    record = cli.status(job_id)
    assert record["attempts"] == 1 and record["status"] == 200
    output = stop(stop_all)
    stuck = [line for line in output.splitlines() if "event loop" in line and "WARNING" in line]
    assert stuck and "block" in stuck[0] and job_id in stuck[0], output
    assert "time.sleep(8)" in output or "in block" in output, output
