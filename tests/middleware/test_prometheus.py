"""with_prometheus: counters per code and handler, latency, sizes, in-progress, ignore, reuse."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, Counter

from pywork import REQUEST_SIZE, RESPONSE_SIZE, Job, JobError, NotFound, Status, Worker
from pywork.middleware import with_prometheus


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_counts_every_execution_by_code_and_handler() -> None:
    # Given a worker instrumented on its own registry
    registry = CollectorRegistry()
    worker = Worker(middleware=[with_prometheus(registry=registry)])

    @worker.handler("work")
    async def work(job: Job) -> None:
        outcome = job.args["outcome"]
        if outcome == "missing":
            raise NotFound()
        if outcome == "crash":
            raise RuntimeError("boom")
        if outcome == "slow":
            await asyncio.sleep(10)
        if outcome == "status":
            job.ctx.set_status(Status.NO_RESPONSE)  # type: ignore[union-attr]

    @worker.handler("other")
    def other(job: Job) -> None:
        pass

    outcomes = ["ok"] * 5 + ["missing"] * 2 + ["crash"] * 3 + ["slow"] + ["status"] * 4
    async with worker:
        # When each outcome runs
        for outcome in outcomes:
            await worker.perform(Job("work", {"outcome": outcome}, timeout=0.05), wait=True)
        for _ in range(2):
            await worker.perform(Job("other"), wait=True)
    # Then requests_total{code,handler} matches exactly
    expected = {"200": 5, "404": 2, "500": 3, "408": 1, "444": 4}
    for code, count in expected.items():
        assert sample(registry, "pywork_requests_total", code=code, handler="work") == count
    assert sample(registry, "pywork_requests_total", code="200", handler="other") == 2
    # And the latency histogram saw every run, the slow one near its timeout
    assert sample(registry, "pywork_request_duration_seconds_count", handler="work") == 15
    assert sample(registry, "pywork_request_duration_seconds_sum", handler="work") >= 0.05
    assert sample(registry, "pywork_in_progress", handler="work") == 0


async def test_in_progress_gauge_while_running() -> None:
    registry = CollectorRegistry()
    worker = Worker(middleware=[with_prometheus(registry=registry)])
    started = asyncio.Event()
    release = asyncio.Event()

    @worker.handler("hold")
    async def hold(job: Job) -> None:
        started.set()
        await release.wait()

    async with worker:
        execution = await worker.perform(Job("hold"))
        await asyncio.wait_for(started.wait(), 5)
        assert sample(registry, "pywork_in_progress", handler="hold") == 1
        release.set()
        await execution.wait(5)
    assert sample(registry, "pywork_in_progress", handler="hold") == 0


async def test_cancelled_runs_are_counted_and_leave_the_gauge_at_zero() -> None:
    registry = CollectorRegistry()
    worker = Worker(middleware=[with_prometheus(registry=registry)])
    started = asyncio.Event()

    @worker.handler("slow")
    async def slow(job: Job) -> None:
        started.set()
        await asyncio.sleep(10)

    async with worker:
        execution = await worker.perform(Job("slow"))
        await asyncio.wait_for(started.wait(), 5)
        execution.cancel()
        assert await execution.wait(5) is Status.CANCELLED
    assert sample(registry, "pywork_requests_total", code="499", handler="slow") == 1
    assert sample(registry, "pywork_in_progress", handler="slow") == 0


async def test_request_and_response_sizes_when_the_handler_sets_them() -> None:
    registry = CollectorRegistry()
    worker = Worker(middleware=[with_prometheus(registry=registry)])

    @worker.handler("sized")
    async def sized(job: Job) -> None:
        if job.args["set"]:
            job.ctx[REQUEST_SIZE] = 100  # type: ignore[index]
            job.ctx[RESPONSE_SIZE] = 2048  # type: ignore[index]

    async with worker:
        for flag in (True, True, False):
            await worker.perform(Job("sized", {"set": flag}), wait=True)
    assert sample(registry, "pywork_request_size_bytes_count", handler="sized") == 2
    assert sample(registry, "pywork_request_size_bytes_sum", handler="sized") == 200
    assert sample(registry, "pywork_response_size_bytes_sum", handler="sized") == 4096


async def test_ignored_handlers_are_passed_through_uninstrumented() -> None:
    registry = CollectorRegistry()
    worker = Worker(middleware=[with_prometheus(registry=registry, ignore=["health.ping"])])
    ran: list[str] = []
    worker.register("health.ping", lambda job: ran.append(job.handler))
    worker.register("work", lambda job: ran.append(job.handler))
    async with worker:
        ping = await worker.perform(Job("health.ping"), wait=True)
        await worker.perform(Job("work"), wait=True)
    assert ran == ["health.ping", "work"]
    assert ping.status is Status.SUCCESS
    assert sample(registry, "pywork_requests_total", code="200", handler="health.ping") == 0
    assert sample(registry, "pywork_request_duration_seconds_count", handler="health.ping") == 0
    assert sample(registry, "pywork_requests_total", code="200", handler="work") == 1


async def test_namespace_and_subsystem_prefix_the_names() -> None:
    registry = CollectorRegistry()
    worker = Worker(
        middleware=[with_prometheus(namespace="acme", subsystem="jobs", registry=registry)]
    )
    worker.register("work", lambda job: None)
    async with worker:
        await worker.perform(Job("work"), wait=True)
    assert sample(registry, "acme_jobs_requests_total", code="200", handler="work") == 1
    assert sample(registry, "acme_jobs_in_progress", handler="work") == 0


async def test_creating_it_twice_on_one_registry_reuses_the_collectors() -> None:
    # Given two workers in one process, each building its own adapter on one registry
    registry = CollectorRegistry()
    first = Worker(middleware=[with_prometheus(registry=registry)])
    second = Worker(middleware=[with_prometheus(registry=registry)])
    for worker in (first, second):
        worker.register("work", lambda job: None)
    # When both run a job
    async with first, second:
        await first.perform(Job("work"), wait=True)
        await second.perform(Job("work"), wait=True)
    # Then there is one series, counting both
    assert sample(registry, "pywork_requests_total", code="200", handler="work") == 2


def test_the_default_registry_can_be_used_twice() -> None:
    with_prometheus()
    with_prometheus()


def test_names_taken_by_another_collector_are_reported() -> None:
    registry = CollectorRegistry()
    Counter("taken_requests", "not pywork's", registry=registry)
    with pytest.raises(ValueError, match="namespace"):
        with_prometheus(namespace="taken", registry=registry)
    # nothing half-registered was left behind: another namespace still works
    with_prometheus(namespace="free", registry=registry)


async def test_status_of_an_inner_adapter_that_raised() -> None:
    registry = CollectorRegistry()

    def rate_limit(inner):  # type: ignore[no-untyped-def]
        async def run(job: Job) -> None:
            raise JobError(Status.TOO_MANY_REQUESTS)

        return run

    worker = Worker(middleware=[rate_limit, with_prometheus(registry=registry)])
    worker.register("work", lambda job: None)
    async with worker:
        execution = await worker.perform(Job("work"), wait=True)
    assert execution.status is Status.TOO_MANY_REQUESTS
    assert sample(registry, "pywork_requests_total", code="429", handler="work") == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"namespace": 3}, TypeError),
        ({"namespace": "bad-name"}, ValueError),
        ({"subsystem": "1x"}, ValueError),
        ({"ignore": "work"}, TypeError),
        ({"ignore": [1]}, TypeError),
        ({"registry": object()}, TypeError),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        with_prometheus(**kwargs)  # type: ignore[arg-type]
