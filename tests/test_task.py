"""Typed args: models convert the JSON args, errors name the field; Task.job defaults."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any, TypedDict

import msgspec
import pydantic
import pytest

from pywork import InternalError, InvalidArgs, Job, JobState, SerializationError, Status, Worker
from pywork.task import ArgsModel, Task, args_model_of
from pywork.testing import MemoryBroker, drain


class User(msgspec.Struct):
    name: str
    age: int
    tags: list[str] = []


class Signup(msgspec.Struct):
    user: User
    plan: str = "free"


@dataclasses.dataclass
class Resize:
    path: str
    width: int


class Notify(TypedDict):
    to: str
    times: int


class Invoice(pydantic.BaseModel):
    customer: str
    lines: list[int]


MODELS: list[tuple[type, dict[str, Any], dict[str, Any], str]] = [
    # model, good args, bad args, the field the error must name
    (Signup, {"user": {"name": "ada", "age": 36}}, {"user": {"name": "ada", "age": "x"}},
     "args['user']['age']"),
    (Resize, {"path": "a.png", "width": 10}, {"path": "a.png", "width": [1]}, "args['width']"),
    (Notify, {"to": "a@b.c", "times": 2}, {"to": 5, "times": 2}, "args['to']"),
    (Invoice, {"customer": "acme", "lines": [1, 2]}, {"customer": "acme", "lines": [1, "x"]},
     "args['lines'][1]"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "good", "bad", "field"), MODELS)
def test_each_kind_of_model_converts_and_names_the_bad_field(
    model: type, good: dict[str, Any], bad: dict[str, Any], field: str
) -> None:
    args = ArgsModel(model, "h")
    value = args.convert(good)
    assert isinstance(value, dict if model is Notify else model)
    assert args.encode(value) == {**args.encode(good)}
    with pytest.raises(InvalidArgs, match=re.escape(f"invalid args for 'h': {field}")):
        args.convert(bad)


def test_a_missing_field_is_named() -> None:
    with pytest.raises(InvalidArgs, match=r"args\['user'\]\['age'\] is required"):
        ArgsModel(Signup, "signup").convert({"user": {"name": "ada"}})
    with pytest.raises(InvalidArgs, match=r"args\['user'\] is required"):
        ArgsModel(Signup, "signup").convert({})


def test_invalid_args_is_a_value_error() -> None:
    assert issubclass(InvalidArgs, ValueError)


def test_a_model_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(TypeError, match=r"msgspec\.Struct, a dataclass, a TypedDict"):
        ArgsModel(dict, "h")


async def typed(job: Job, args: Signup) -> None:
    """A (job, args) handler whose annotation is a string (from __future__ annotations)."""


async def plain(job: Job) -> None:
    """A (job) handler."""


async def untyped(job: Job, args) -> None:  # type: ignore[no-untyped-def]
    """A (job, args) handler with no model."""


def test_the_model_comes_from_args_or_the_annotation() -> None:
    found = args_model_of(typed, None, "typed")
    assert found is not None and found.model is Signup
    explicit = args_model_of(untyped, Resize, "untyped")
    assert explicit is not None and explicit.model is Resize
    assert args_model_of(plain, None, "plain") is None
    with pytest.raises(TypeError, match="args model is unknown"):
        args_model_of(untyped, None, "untyped")
    with pytest.raises(TypeError, match=r"takes only \(job\)"):
        args_model_of(plain, Signup, "plain")


def test_task_job_validates_at_once_and_applies_the_defaults() -> None:
    task = Task(typed, "signup", queue="accounts", timeout=5.0, max_retries=1,
                args=ArgsModel(Signup, "signup"))  # fmt: skip
    job = task.job(Signup(User("ada", 36)), key="ada")
    assert (job.handler, job.queue, job.timeout, job.max_retries, job.key) == (
        "signup", "accounts", None, None, "ada",
    )  # fmt: skip
    assert job.args == {"user": {"name": "ada", "age": 36, "tags": []}, "plan": "free"}
    assert task.job({"user": {"name": "bo", "age": 1}}, queue="vip").queue == "vip"
    with pytest.raises(InvalidArgs, match=r"args\['user'\]\['age'\]"):
        task.job({"user": {"name": "ada", "age": "old"}})
    with pytest.raises(TypeError, match="must be a Signup or a mapping"):
        task.job(Resize("a", 1))
    assert (task.name, task.queue, task.timeout, task.max_retries, task.args_type) == (
        "signup", "accounts", 5.0, 1, Signup,
    )  # fmt: skip


def test_task_job_without_a_model_takes_a_mapping() -> None:
    task = Task(plain, "plain")
    assert task.job().args == {} and task.job().queue == "default"
    assert task.job({"a": 1}).args == {"a": 1}
    with pytest.raises(SerializationError):
        task.job({"a": {1, 2}})
    with pytest.raises(TypeError, match="mapping or None"):
        task.job([1, 2])


def test_calling_a_task_calls_the_function() -> None:
    def double(job: Job) -> int:
        return 2 * int(job.args["n"])

    assert Task(double, "double")(Job("double", {"n": 4})) == 8


# ---------------------------------------------------------------------------------------
# the worker runs tasks: typed args, options, results
# ---------------------------------------------------------------------------------------


async def test_a_typed_handler_gets_its_model_and_returns_a_result() -> None:
    worker = Worker()
    seen: list[Signup] = []

    @worker.handler("signup")
    async def signup(job: Job, args: Signup) -> str:
        seen.append(args)
        return f"welcome {args.user.name}"

    @worker.handler("resize", args=Resize)
    def resize(job: Job, args) -> int:  # type: ignore[no-untyped-def]
        return int(args.width) * 2

    assert isinstance(signup, Task) and signup.args_type is Signup
    async with worker:
        done = await worker.perform(signup.job({"user": {"name": "ada", "age": 36}}), wait=True)
        assert done.status is Status.SUCCESS and done.result == "welcome ada"
        assert done.ctx.result == "welcome ada"
        assert seen == [Signup(User("ada", 36))]
        plain = await worker.perform(resize.job(Resize("a.png", 21)), wait=True)
        assert (plain.status, plain.result) == (Status.SUCCESS, 42)


async def test_bad_args_end_the_run_with_bad_request_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = Worker()
    ran: list[object] = []

    @worker.handler("signup")
    async def signup(job: Job, args: Signup) -> None:
        ran.append(args)

    async with worker:
        done = await worker.perform(Job("signup", {"user": {"name": 1}}), wait=True)
    assert done.status is Status.BAD_REQUEST and ran == []
    assert isinstance(done.error, InvalidArgs)
    assert "args['user']['name']" in str(done.error)
    assert done.result is None
    assert not [r for r in caplog.records if r.exc_info]


async def test_the_handler_timeout_applies_when_the_job_has_none() -> None:
    worker = Worker()

    @worker.handler("slow", timeout=0.05)
    async def slow(job: Job) -> None:
        await asyncio.sleep(30)

    async with worker:
        done = await worker.perform(slow.job(), wait=True)
        assert done.status is Status.TIMEOUT
        assert "exceeded its timeout of 0.05s" in str(done.error)
        longer = await worker.perform(Job("slow", timeout=0.2), wait=True)
        assert longer.status is Status.TIMEOUT and "0.2s" in str(longer.error)
        assert longer.duration is not None and longer.duration >= 0.15


def test_register_checks_its_options() -> None:
    worker = Worker()
    with pytest.raises(ValueError, match="queue"):
        worker.register("a", plain, queue="")
    with pytest.raises(ValueError, match="timeout"):
        worker.register("a", plain, timeout=0)
    with pytest.raises(ValueError, match="max_retries"):
        worker.register("a", plain, max_retries=-1)
    with pytest.raises(TypeError, match="args"):
        worker.register("a", untyped, args=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="args model is unknown"):
        worker.register("a", untyped)
    assert worker.handlers == []
    task = worker.register("a", plain, queue="q", timeout=2, max_retries=0)
    assert worker.task("a") is task
    assert (task.queue, task.timeout, task.max_retries) == ("q", 2.0, 0)


async def test_on_a_durable_queue_bad_args_are_dead_at_once_and_max_retries_applies() -> None:
    worker = Worker()
    runs: list[int] = []

    @worker.handler("signup")
    async def signup(job: Job, args: Signup) -> dict[str, str]:
        return {"user": args.user.name}

    @worker.handler("flaky", max_retries=1)
    async def flaky(job: Job) -> None:
        runs.append(job.ctx.attempt if job.ctx else 0)
        raise InternalError("down")

    broker = MemoryBroker()
    bad = await broker.enqueue(Job("signup", {"user": {"name": "ada", "age": "old"}}))
    good = await broker.enqueue(signup.job({"user": {"name": "ada", "age": 36}}))
    failing = await broker.enqueue(flaky.job())
    await drain(worker, broker, max_retries=5)
    record = await broker.get(bad)
    assert record is not None and record.state is JobState.DEAD
    assert record.status is Status.BAD_REQUEST and record.attempts == 1
    assert record.error is not None and record.error.startswith("InvalidArgs: ")
    assert "args['user']['age']" in record.error
    assert (await broker.get(good)).state is JobState.SUCCEEDED  # type: ignore[union-attr]
    dead = await broker.get(failing)
    assert dead is not None and dead.state is JobState.DEAD and runs == [1, 2]
