"""The ops app over real HTTP: uvicorn on a free loopback port, read with httpx."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from pywork import ConcurrentJob, Job, JobError, PerformWith, QueueStats, Status, Worker
from pywork.middleware import HealthCheck, with_health_check, with_prometheus
from pywork.ops import OpsServer, create_app, serve


@asynccontextmanager
async def served(app: object) -> AsyncIterator[httpx.AsyncClient]:
    """Serve `app` on a free loopback port; yield a client for it."""
    async with (
        OpsServer(app, port=0) as server,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
    ):
        yield client


def counters(text: str, name: str) -> dict[tuple[str, str], float]:
    """{(code, handler): value} of the counter `name` in a Prometheus text page."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[(sample.labels["code"], sample.labels["handler"])] = sample.value
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for_http(url: str, timeout: float = 10.0) -> httpx.Response:
    """GET `url` until the server answers (it may still be binding)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            try:
                return await client.get(url)
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.01)


async def test_metrics_count_each_status_code_and_handler_over_http() -> None:
    # Given a worker with Prometheus metrics and the ops app on a free port
    registry = CollectorRegistry()
    worker = Worker(middleware=[with_prometheus(registry=registry)], name="ops-test")

    @worker.handler("charge")
    async def charge(job: Job) -> None:
        code = job.args["code"]
        if code != 200:
            raise JobError(code)

    @worker.handler("refund")
    def refund(job: Job) -> None:
        if job.args["fail"]:
            raise RuntimeError("bank down")

    plan = {200: 7, 400: 2, 429: 3, 503: 1}
    async with worker, served(create_app(worker=worker, registry=registry)) as client:
        # When the worker performs a known mix of outcomes
        for code, count in plan.items():
            for _ in range(count):
                await worker.perform(Job("charge", {"code": code}), wait=True)
        for fail in (False, False, True):
            await worker.perform(Job("refund", {"fail": fail}), wait=True)
        response = await client.get("/metrics")
    # Then the scraped counters match the executions performed, per code and handler
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert counters(response.text, "pywork_requests_total") == {
        ("200", "charge"): 7,
        ("400", "charge"): 2,
        ("429", "charge"): 3,
        ("503", "charge"): 1,
        ("200", "refund"): 2,
        ("500", "refund"): 1,
    }
    assert "pywork_request_duration_seconds_bucket" in response.text
    assert 'pywork_in_progress{handler="charge"} 0.0' in response.text


async def test_metrics_speak_openmetrics_when_asked() -> None:
    registry = CollectorRegistry()
    with_prometheus(registry=registry)
    async with served(create_app(registry=registry)) as client:
        response = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


async def test_ready_flips_down_and_back_with_the_health_check() -> None:
    # Given a health check over the last 4 requests, down above 50 % errors
    health = HealthCheck(error_percentage=0.5, last_requests=4, min_requests=4, tick=0)
    worker = Worker(middleware=[with_health_check(health)])

    @worker.handler("work")
    async def work(job: Job) -> None:
        if job.args["fail"]:
            raise JobError(Status.UNAVAILABLE)

    async def perform(*fails: bool) -> None:
        for fail in fails:
            await worker.perform(Job("work", {"fail": fail}), wait=True)

    async with worker, served(create_app(worker=worker, health=health)) as client:
        await perform(False, False, False, False)
        ok = await client.get("/ready")
        # When 3 of the last 4 fail
        await perform(True, True, True)
        down = await client.get("/ready")
        # And then the failures age out of the last 4
        await perform(False, False, False, False)
        back = await client.get("/ready")
    assert (ok.status_code, ok.text) == (200, "OK")
    assert (down.status_code, down.text) == (500, "DOWN")
    assert (back.status_code, back.text) == (200, "OK")


async def test_ready_is_down_while_the_worker_is_not_running() -> None:
    worker = Worker()
    async with served(create_app(worker=worker)) as client:
        before = await client.get("/ready")
        async with worker:
            during = await client.get("/ready")
        after = await client.get("/ready")
    assert [r.status_code for r in (before, during, after)] == [500, 200, 500]


async def test_live_answers_while_the_loop_runs() -> None:
    async with served(create_app()) as client:
        response = await client.get("/live")
    assert (response.status_code, response.text) == (200, "OK")


class Stats:
    """A broker as the ops app sees it: anything with an async stats()."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    async def stats(self) -> dict[str, QueueStats]:
        if self.fail:
            raise ConnectionError("redis is gone")
        return {"default": QueueStats(queued=3, running=1, dead=2), "mail": QueueStats()}


async def test_index_summarises_worker_health_and_queues() -> None:
    health = HealthCheck(tick=0)
    worker = Worker(middleware=[with_health_check(health)], name="billing")
    started = asyncio.Event()
    release = asyncio.Event()

    @worker.handler("charge")
    async def charge(job: Job) -> None:
        started.set()
        await release.wait()

    worker.register("refund", lambda job: None)
    app = create_app(worker=worker, health=health, broker=Stats())
    async with worker, served(app) as client:
        execution = await worker.perform(Job("charge"))
        await asyncio.wait_for(started.wait(), 5)
        busy = (await client.get("/")).json()
        release.set()
        await execution.wait(5)
        idle = (await client.get("/")).json()
    assert busy["name"] == "billing"
    assert busy["handlers"] == ["charge", "refund"]
    assert busy["active"] == 1
    assert busy["running"] is True
    assert busy["ready"] is True
    assert busy["queues"]["default"] == {
        "queued": 3,
        "scheduled": 0,
        "running": 1,
        "failed": 0,
        "succeeded": 0,
        "dead": 2,
        "cancelled": 0,
    }
    assert set(busy["queues"]) == {"default", "mail"}
    assert idle["active"] == 0
    assert idle["health"] == {"status": 200, "requests": 1, "errors": 0, "error_share": 0.0}


async def test_index_reports_a_failing_broker_without_failing() -> None:
    async with served(create_app(broker=Stats(fail=True))) as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert response.json()["queues"] is None
    assert response.json()["broker_error"] == "ConnectionError: redis is gone"


async def test_index_summarises_a_concurrent_job() -> None:
    cj = ConcurrentJob(
        Job("poll"), perform_with=PerformWith.EVERY_SYNC, perform_every=0.05, max_workers=2
    )
    cj.register("poll", lambda job: None)
    async with cj, served(create_app(worker=cj)) as client:
        body = (await client.get("/")).json()
        ready = await client.get("/ready")
    assert body["name"] == "ConcurrentJob(poll)"
    assert body["handlers"] == ["poll"]
    assert body["running"] is True
    assert body["max_workers"] == 2
    assert ready.status_code == 200


async def test_ready_and_summary_options_extend_the_app() -> None:
    # Given an app whose readiness and summary come from the caller (as the supervisor's)
    up = {"children": True}
    app = create_app(
        registry=CollectorRegistry(),
        ready=lambda: up["children"],
        summary=lambda: {"processes": [{"number": 1, "alive": up["children"]}]},
    )
    async with served(app) as client:
        # Then /ready follows the condition and GET / carries the extra fields
        assert (await client.get("/ready")).status_code == 200
        body = (await client.get("/")).json()
        assert body["processes"] == [{"number": 1, "alive": True}] and body["ready"] is True
        up["children"] = False
        down = await client.get("/ready")
        assert (down.status_code, down.text) == (500, "DOWN")
        body = (await client.get("/")).json()
        assert body["processes"] == [{"number": 1, "alive": False}] and body["ready"] is False


async def test_the_app_mounts_in_another_asgi_app() -> None:
    outer = Starlette(routes=[Mount("/ops", app=create_app())])
    async with served(outer) as client:
        response = await client.get("/ops/live")
    assert response.text == "OK"


async def test_serve_runs_until_the_stop_event() -> None:
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(create_app(), port=port, stop=stop))
    response = await wait_for_http(f"http://127.0.0.1:{port}/live")
    assert response.text == "OK"
    stop.set()
    await asyncio.wait_for(task, 10)
    with pytest.raises(httpx.ConnectError):
        await wait_for_http(f"http://127.0.0.1:{port}/live", timeout=0)


async def test_serve_stops_cleanly_when_cancelled() -> None:
    port = free_port()
    task = asyncio.create_task(serve(create_app(), port=port))
    await wait_for_http(f"http://127.0.0.1:{port}/live")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    # the port is free again
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


async def test_ops_server_handle() -> None:
    server = OpsServer(create_app(), port=0)
    await server.start()
    assert server.running and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    with pytest.raises(RuntimeError, match="already started"):
        await server.start()
    # a taken port is reported at start
    taken = OpsServer(create_app(), port=server.port)
    with pytest.raises(OSError):
        await taken.start()
    await server.stop()
    await server.stop()  # idempotent
    assert not server.running


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"worker": "w"}, TypeError),
        ({"broker": object()}, TypeError),
        ({"health": 200}, TypeError),
        ({"registry": object()}, TypeError),
        ({"ready": True}, TypeError),
        ({"summary": {"a": 1}}, TypeError),
    ],
)
def test_create_app_rejects_invalid_arguments(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        create_app(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"port": -1}, ValueError),
        ({"port": "80"}, TypeError),
        ({"host": ""}, TypeError),
        ({"shutdown_timeout": -1}, ValueError),
    ],
)
def test_ops_server_rejects_invalid_arguments(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        OpsServer(create_app(), **kwargs)  # type: ignore[arg-type]


def test_metrics_without_prometheus_client_say_what_to_install() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["prometheus_client"] = None
        import httpx
        from pywork.ops import create_app

        async def main():
            transport = httpx.ASGITransport(app=create_app())
            async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
                response = await client.get("/metrics")
                print(response.status_code, response.text.strip())

        asyncio.run(main())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('501 prometheus_client is not installed: pip install "pywork')


async def test_a_cancelled_start_closes_the_server() -> None:
    server = OpsServer(create_app(), port=0)
    starting = asyncio.create_task(server.start())
    await asyncio.sleep(0)  # the socket is bound, uvicorn is starting
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not server.running
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", server.port))


async def test_route_paths_are_options() -> None:
    health = HealthCheck()
    app = create_app(
        health=health, metrics_path="/m", ready_path="/healthz/ready", live_path="/healthz/live"
    )
    async with served(app) as client:
        ready = await client.get("/healthz/ready")
        live = await client.get("/healthz/live")
        metrics = await client.get("/m")
        old = await client.get("/ready")
        health.set_status(Status.UNAVAILABLE)  # maintenance
        maintenance = await client.get("/healthz/ready")
    assert (ready.status_code, live.status_code, metrics.status_code) == (200, 200, 200)
    assert old.status_code == 404
    assert (maintenance.status_code, maintenance.text) == (500, "DOWN")


@pytest.mark.parametrize(
    "kwargs",
    [{"ready_path": "ready"}, {"live_path": ""}, {"metrics_path": "/x", "ready_path": "/x"}],
)
def test_route_paths_must_be_distinct_absolute_paths(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        create_app(**kwargs)  # type: ignore[arg-type]
