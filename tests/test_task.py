"""Typed args: models convert the JSON args, errors name the field; Task.job defaults."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, TypedDict

import msgspec
import pydantic
import pytest

from pywork import InvalidArgs, Job, SerializationError
from pywork.task import ArgsModel, Task, args_model_of


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
