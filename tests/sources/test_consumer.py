"""consume_source without a server: arguments, a source that ends, lazy extras."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from pywork import HandlerNotFound, InternalError, Job, Worker
from pywork.sources import Message, Source


@dataclass
class ListMessage:
    id: str
    data: Any
    attempt: int = 1
    settled: list[tuple[str, Any]] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def nack(self, delay: float | None = None) -> None:
        self.settled.append(("nack", delay))


class ListSource:
    """A finite source over a list: a complete Source, the shape docs/sources.md shows."""

    def __init__(self, items: list[Any]) -> None:
        self.messages = [ListMessage(str(i), item) for i, item in enumerate(items)]
        self._next = iter(self.messages)
        self.dead: list[tuple[str, str]] = []
        self.closed = 0

    def __aiter__(self) -> ListSource:
        return self

    async def __anext__(self) -> ListMessage:
        try:
            return next(self._next)
        except StopIteration:
            raise StopAsyncIteration from None

    async def dead_letter(self, message: Message, reason: str) -> None:
        self.dead.append((message.id, reason))

    async def close(self) -> None:
        self.closed += 1


def test_a_list_source_is_a_source() -> None:
    _: Source = ListSource([])
    assert isinstance(ListSource([]), Source)
    assert isinstance(ListMessage("1", None), Message)


async def test_an_exhausted_source_returns_once_every_message_is_settled() -> None:
    source = ListSource([1, 2, 3, "boom"])
    async with Worker() as worker:

        @worker.handler("add")
        async def add(job: Job) -> None:
            await asyncio.sleep(0.01)
            if job.args["received_data"] == "boom":
                raise InternalError("no")

        await asyncio.wait_for(
            worker.consume_source(source, Job("add"), max_retries=0, backoff=(0, 0)), 5
        )
        assert worker.running  # an exhausted source does not stop the worker
    assert [m.settled for m in source.messages[:3]] == [[("ack", None)]] * 3
    assert source.messages[3].settled == []
    assert source.dead == [("3", "INTERNAL_ERROR (500): InternalError: no")]
    assert source.closed == 0  # consume_source does not close the source


async def test_bad_arguments_are_refused_before_anything_starts() -> None:
    worker = Worker()
    worker.register("h", lambda job: None)
    with pytest.raises(HandlerNotFound, match="'missing'"):
        await worker.consume_source(ListSource([]), Job("missing"))
    with pytest.raises(TypeError, match="Source"):
        await worker.consume_source([1, 2], Job("h"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Job"):
        await worker.consume_source(ListSource([]), "h")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concurrency"):
        await worker.consume_source(ListSource([]), Job("h"), concurrency=0)
    with pytest.raises(ValueError, match="max_retries"):
        await worker.consume_source(ListSource([]), Job("h"), max_retries=-1)
    with pytest.raises(ValueError, match="cap"):
        await worker.consume_source(ListSource([]), Job("h"), backoff=(2.0, 1.0))
    assert not worker.running


async def test_perform_takes_the_attempt() -> None:
    async with Worker() as worker:
        worker.register("h", lambda job: None)
        execution = await worker.perform(Job("h"), wait=True, attempt=4)
        assert execution.attempt == 4
        with pytest.raises(ValueError, match="attempt"):
            await worker.perform(Job("h"), attempt=0)


@pytest.mark.parametrize(
    ("module", "name", "extra"),
    [("pulsar", "PulsarSource", "pywork[pulsar]"), ("aiobotocore", "S3Source", "pywork[s3]")],
)
def test_a_missing_extra_is_named_and_pywork_imports_without_it(
    module: str, name: str, extra: str
) -> None:
    program = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "import pywork, pywork.sources\n"
        "try:\n"
        f"    getattr(pywork.sources, {name!r})\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert f'pip install "{extra}"' in result.stdout, result


def test_importing_pywork_does_not_import_the_drivers() -> None:
    program = (
        "import sys, pywork, pywork.sources\n"
        "print(sorted(m for m in ('pulsar', 'aiobotocore') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
