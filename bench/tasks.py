"""Per-job cost of typed args: converting a job's JSON args into its handler's model, in µs.

Measured for a 5-field model of each kind the worker accepts (``msgspec.Struct``,
dataclass, ``TypedDict``, pydantic ``BaseModel``), with the converter the worker uses on
the consume path (:class:`pywork.task.ArgsModel`), and ``Task.job()`` (validate and
encode a model instance, the producer side). Each figure is the best of ``--repeat`` runs
of ``--n`` conversions. Target, from the issue: under 5 µs for the msgspec Struct.

Run it with ``python bench/tasks.py [--n 100000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, TypedDict

import msgspec
import pydantic

from pywork.task import ArgsModel, Task

ARGS: dict[str, Any] = {
    "user_id": 42,
    "email": "ada@example.com",
    "plan": "pro",
    "seats": 5,
    "tags": ["beta", "eu"],
}


class Struct(msgspec.Struct):
    user_id: int
    email: str
    plan: str
    seats: int
    tags: list[str]


@dataclasses.dataclass
class Dataclass:
    user_id: int
    email: str
    plan: str
    seats: int
    tags: list[str]


class Typed(TypedDict):
    user_id: int
    email: str
    plan: str
    seats: int
    tags: list[str]


class Pydantic(pydantic.BaseModel):
    user_id: int
    email: str
    plan: str
    seats: int
    tags: list[str]


def best_us(fn: Callable[[], object], n: int, repeat: int) -> float:
    """The best of `repeat` runs of `n` calls of `fn`, in µs per call."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


async def _noop(job: object, args: object) -> None:
    """A handler taking (job, args)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    print(f"python {sys.version.split()[0]} on {platform.machine()}, msgspec {msgspec.__version__}")
    print("consume path: job.args (JSON dict) -> model, per job")
    for model in (Struct, Dataclass, Typed, Pydantic):
        converter = ArgsModel(model, "signup")
        us = best_us(lambda c=converter: c.convert(ARGS), options.n, options.repeat)
        print(f"  {model.__name__:<10} {us:6.2f} µs")
    print("producer side: task.job(model instance) -> Job, per job")
    for model in (Struct, Pydantic):
        task = Task(_noop, "signup", args=ArgsModel(model, "signup"))
        instance = ArgsModel(model, "signup").convert(ARGS)
        us = best_us(lambda t=task, i=instance: t.job(i), options.n // 4, options.repeat)
        print(f"  {model.__name__:<10} {us:6.2f} µs")


if __name__ == "__main__":
    main()
