"""Typed arguments and handler options: :class:`Task` and the args models it converts.

A handler may take ``(job)`` or ``(job, args)``. With ``args=Model`` (or a ``Model``
annotation on the second parameter) the worker converts ``job.args``, the JSON dict on
the wire, into a ``Model`` before the handler runs. ``Model`` may be a
``msgspec.Struct``, a dataclass, a ``TypedDict`` (all three converted by msgspec) or a
pydantic ``BaseModel`` (``pip install "pywork[pydantic]"``). A conversion failure is an
:class:`~pywork.InvalidArgs` naming the field (``args['user']['age']``), which ends the
run with BAD_REQUEST: dead at once on a durable queue.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, is_typeddict

import msgspec

from pywork._durations import optional_duration
from pywork.encoding import check_json
from pywork.errors import InvalidArgs, SerializationError
from pywork.handler import is_async_handler
from pywork.job import Job
from pywork.types import AnyHandler

__all__ = ["ArgsModel", "Task", "args_model_of", "bind_args"]

F = TypeVar("F", bound=Callable[..., Any])

_PATH = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\.\"([^\"]*)\"")


def _field_path(path: str) -> str:
    """msgspec's ``$.user.tags[0]`` as ``args['user']['tags'][0]``."""
    out = "args"
    for name, index, quoted in _PATH.findall(path.removeprefix("$")):
        out += f"[{index}]" if index else f"[{(name or quoted)!r}]"
    return out


def _is_pydantic(model: type) -> bool:
    return any(
        base.__module__.startswith("pydantic") and base.__name__ == "BaseModel"
        for base in model.__mro__
    )


class ArgsModel:
    """Converts a job's JSON args into `model` and back, with errors naming the field.

    Args:
        model: a ``msgspec.Struct``, dataclass, ``TypedDict`` or pydantic ``BaseModel`` class.
        handler: the handler name, for error messages.

    Raises:
        TypeError: `model` is none of those.
    """

    __slots__ = ("_pydantic", "handler", "model")

    def __init__(self, model: type, handler: str) -> None:
        if not isinstance(model, type) or not (
            issubclass(model, msgspec.Struct)
            or dataclasses.is_dataclass(model)
            or is_typeddict(model)
            or _is_pydantic(model)
        ):
            raise TypeError(
                f"args model for {handler!r} must be a msgspec.Struct, a dataclass, a TypedDict "
                f"or a pydantic BaseModel class, got {model!r}"
            )
        self.model = model
        self.handler = handler
        self._pydantic = _is_pydantic(model)

    def __repr__(self) -> str:
        return f"ArgsModel({self.model.__qualname__}, handler={self.handler!r})"

    def convert(self, args: Mapping[str, Any]) -> Any:
        """`args` (JSON) as a `model` instance.

        Raises:
            InvalidArgs: a field is missing, unknown to a strict model, or of the wrong type.
        """
        if self._pydantic:
            return self._convert_pydantic(args)
        try:
            return msgspec.convert(args, self.model)
        except msgspec.ValidationError as exc:
            raise self._invalid(str(exc)) from None

    def _convert_pydantic(self, args: Mapping[str, Any]) -> Any:
        import pydantic

        try:
            return self.model.model_validate(args)  # type: ignore[attr-defined]
        except pydantic.ValidationError as exc:
            error = exc.errors()[0]
            where = "args" + "".join(
                f"[{part}]" if isinstance(part, int) else f"[{part!r}]" for part in error["loc"]
            )
            raise InvalidArgs(
                f"invalid args for {self.handler!r}: {where}: {error['msg']}"
            ) from None

    def _invalid(self, message: str) -> InvalidArgs:
        text, sep, path = message.rpartition(" - at `")
        if not sep:
            text, path = message, "$"
        where = _field_path(path.rstrip("`"))
        missing = re.fullmatch(r"Object missing required field `(.+)`", text)
        if missing is not None:
            return InvalidArgs(
                f"invalid args for {self.handler!r}: {where}[{missing.group(1)!r}] is required"
            )
        return InvalidArgs(f"invalid args for {self.handler!r}: {where}: {text}")

    def encode(self, args: object) -> dict[str, Any]:
        """The JSON dict for `args`: a `model` instance, or a mapping validated against it.

        Raises:
            InvalidArgs: a mapping that does not convert.
            TypeError: neither a `model` instance nor a mapping.
            SerializationError: a value that is not JSON.
        """
        typed_dict = is_typeddict(self.model)
        if isinstance(args, Mapping) and (typed_dict or not isinstance(args, self.model)):
            args = self.convert(args)
        elif typed_dict or not isinstance(args, self.model):
            raise TypeError(
                f"args for {self.handler!r} must be a {self.model.__qualname__} or a mapping, "
                f"got {args!r}"
            )
        if self._pydantic:
            data = args.model_dump(mode="json")  # type: ignore[attr-defined]
        else:
            try:
                data = msgspec.to_builtins(args)
            except TypeError as exc:
                raise SerializationError(f"args for {self.handler!r}: {exc}") from None
        check_json(data)
        result: dict[str, Any] = data
        return result


def args_model_of(
    handler: Callable[..., Any], explicit: type | None, name: str
) -> ArgsModel | None:
    """The args model of `handler`: `explicit`, else the annotation of its second
    parameter (string annotations resolved), else None for a ``(job)`` handler.

    Raises:
        TypeError: a two-parameter handler without a model, or a model of an unknown kind.
    """
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: take it as (job)
        params = []
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if explicit is not None:
        if len(positional) < 2:
            raise TypeError(
                f"handler {name!r} was given args={explicit!r} but takes only (job); "
                "define it as (job, args)"
            )
        return ArgsModel(explicit, name)
    if len(positional) < 2:
        return None
    target: Any = handler
    if not (inspect.isfunction(handler) or inspect.ismethod(handler)):
        target = getattr(handler, "__call__", handler)  # noqa: B004 - an instance's method
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        raise TypeError(f"cannot resolve the annotations of handler {name!r}: {exc}") from exc
    model = hints.get(positional[1].name)
    if model is None:
        raise TypeError(
            f"handler {name!r} takes (job, {positional[1].name}) but its args model is unknown: "
            f"annotate {positional[1].name} with a model class or pass args=Model"
        )
    return ArgsModel(model, name)


def bind_args(fn: Callable[..., Any], args: ArgsModel) -> AnyHandler:
    """A ``(job)`` handler that calls ``fn(job, args.convert(job.args))``, async or plain
    like `fn` (the conversion of a plain handler runs in its thread)."""
    convert = args.convert
    if is_async_handler(fn):

        async def call_async(job: Job) -> Any:
            return await fn(job, convert(job.args))

        return functools.wraps(fn)(call_async)

    def call(job: Job) -> Any:
        return fn(job, convert(job.args))

    return functools.wraps(fn)(call)


class Task(Generic[F]):
    """What ``@worker.handler(...)`` returns: the function, its name and its options.

    Calling the task calls the function. :meth:`job` makes a :class:`~pywork.Job` for it
    with the task's defaults.

    Attributes:
        name: the registered handler name.
        queue: the default queue of :meth:`job` (None: "default").
        timeout: seconds a run may take when the job sets none (None: no limit).
        max_retries: retries when the job sets none (None: the consumer's default).
        args_type: the args model class, or None for a ``(job)`` handler.
    """

    __name__: str  # the function's, like its __doc__ and __wrapped__ (update_wrapper)
    __qualname__: str

    def __init__(
        self,
        fn: F,
        name: str,
        *,
        queue: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        args: ArgsModel | None = None,
    ) -> None:
        self.fn = fn
        self.name = name
        self.queue = queue
        self.timeout = timeout
        self.max_retries = max_retries
        self.args = args
        self.args_type: type | None = None if args is None else args.model
        functools.update_wrapper(self, fn)  # __name__, __doc__, __wrapped__… of the function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the function itself."""
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name!r}>"

    def job(
        self,
        args: object = None,
        /,
        *,
        queue: str | None = None,
        timeout: float | None = None,
        key: str | None = None,
        max_retries: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> Job:
        """A Job for this handler: ``queue`` defaults to the task's (or "default");
        ``timeout`` and ``max_retries`` stay None unless given (the worker applies the
        task's when it runs the job).

        Args:
            args: a model instance or a mapping (validated and encoded to its JSON dict at
                once), or None for no args.

        Raises:
            InvalidArgs: `args` do not convert to the model (the message names the field).
            TypeError, SerializationError: `args` of the wrong kind, or not JSON.
        """
        if args is None:
            data: dict[str, Any] = {}
        elif self.args is not None:
            data = self.args.encode(args)
        elif isinstance(args, Mapping):
            data = dict(args)
            check_json(data)
        else:
            raise TypeError(f"args for {self.name!r} must be a mapping or None, got {args!r}")
        return Job(
            self.name,
            data,
            queue=queue or self.queue or "default",
            timeout=optional_duration(timeout, "timeout", allow_zero=False),
            key=key,
            max_retries=max_retries,
            headers=dict(headers or {}),
        )
