"""The wire format of durable queues: strict JSON via msgspec, never pickle.

Args and headers must be JSON: dicts with str keys, lists/tuples, str, int, float
(finite), bool and None. Anything else raises :class:`SerializationError` naming the
key path (``args['user']['created']``) before anything is stored.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec

from pywork.errors import SerializationError
from pywork.job import Job
from pywork.tracing import inject

__all__ = [
    "MAX_DEPTH",
    "DecodeError",
    "check_json",
    "decode_args",
    "decode_job",
    "decode_value",
    "encode_for_enqueue",
    "encode_job",
    "encode_value",
]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_SCALARS = (str, int, bool, type(None))


class DecodeError(ValueError):
    """A stored message is not a valid job (it is dead-lettered with BAD_REQUEST)."""


#: How deeply args, headers and results may nest: deeper data is refused at enqueue, since
#: a consumer's decoder could not read it back (it would be dead-lettered, or worse).
MAX_DEPTH = 200


_TOO_DEEP = f"nests deeper than {MAX_DEPTH} levels, more than a decoder reads back"


class _Invalid(Exception):
    """Raised inside :func:`check_json`'s walk; the key path is collected on the way out."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.parts: list[str] = []


def _walk(value: Any, depth: int) -> None:
    if isinstance(value, dict):  # first: args and headers are dicts
        if depth >= MAX_DEPTH:
            raise _Invalid(_TOO_DEEP)
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Invalid(f"has a key {key!r} of type {type(key).__name__}: JSON keys are str")
            if not isinstance(item, _SCALARS):
                try:
                    _walk(item, depth + 1)
                except _Invalid as exc:
                    exc.parts.append(f"[{key!r}]")
                    raise
        return
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            raise _Invalid(_TOO_DEEP)
        for index, item in enumerate(value):
            if not isinstance(item, _SCALARS):
                try:
                    _walk(item, depth + 1)
                except _Invalid as exc:
                    exc.parts.append(f"[{index}]")
                    raise
        return
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(f"is {value!r}: JSON has no NaN or infinity")
        return
    raise _Invalid(
        f"is a {type(value).__name__} ({value!r:.60}), which a durable queue cannot "
        "encode; use dict (str keys), list, str, int, float, bool or None"
    )


def check_json(value: Any, path: str = "args") -> None:
    """Raise SerializationError, naming the key path, unless `value` is plain JSON
    (at most :data:`MAX_DEPTH` levels deep)."""
    try:
        _walk(value, 0)
    except _Invalid as exc:
        where = path + "".join(reversed(exc.parts))
        raise SerializationError(f"{where} {exc.reason}") from None


def encode_job(job: Job) -> bytes:
    """Encode `job` (all fields but ctx) as JSON bytes.

    Raises:
        SerializationError: args or headers are not plain JSON.
    """
    check_json(job.args, "args")
    check_json(job.headers, "headers")
    return _encoder.encode(
        {
            "id": job.id,
            "handler": job.handler,
            "args": job.args,
            "queue": job.queue,
            "timeout": job.timeout,
            "key": job.key,
            "max_retries": job.max_retries,
            "headers": job.headers,
        }
    )


def encode_for_enqueue(job: Job) -> bytes:
    """What every broker stores on enqueue: the current trace context injected into
    ``job.headers`` (so the consumer's span continues the producer's trace), then the
    job encoded.

    Raises:
        TypeError: `job` is not a Job.
        SerializationError: args or headers are not plain JSON.
    """
    if not isinstance(job, Job):
        raise TypeError(f"expected a pywork.Job, got {job!r}")
    inject(job)
    return encode_job(job)


def decode_job(data: bytes | str) -> Job:
    """Decode bytes made by :func:`encode_job` back into a Job.

    Raises:
        DecodeError: `data` is not a valid encoded job.
    """
    try:
        fields = _decoder.decode(data)
        if not isinstance(fields, dict):
            raise DecodeError(f"expected a JSON object, got {type(fields).__name__}")
        return Job(
            fields["handler"],
            fields.get("args") or {},
            queue=fields.get("queue") or "default",
            timeout=fields.get("timeout"),
            id=fields["id"],
            key=fields.get("key"),
            max_retries=fields.get("max_retries"),
            headers=fields.get("headers") or {},
        )
    except DecodeError:
        raise
    except (msgspec.DecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"undecodable job message: {type(exc).__name__}: {exc}") from exc


def decode_args(data: bytes | str) -> dict[str, Any]:
    """The args of an encoded job, or ``{}`` when `data` is not a valid encoded job
    (a record is still shown, whatever its payload)."""
    try:
        fields = _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return {}
    args = fields.get("args") if isinstance(fields, dict) else None
    return args if isinstance(args, dict) else {}


def encode_value(value: Any, path: str) -> bytes:
    """Encode a plain JSON value (a run's result, a progress report) for storage.

    Raises:
        SerializationError: `value` is not plain JSON; the message names the key path
            starting at `path` (``result['at']``).
    """
    check_json(value, path)
    return _encoder.encode(value)


def decode_value(data: bytes | str | None) -> Any:
    """The inverse of :func:`encode_value`; None for None or undecodable data."""
    if data is None:
        return None
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
