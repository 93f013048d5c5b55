"""Argument checks shared by the public entry points."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["backoff_pair", "duration", "optional_duration", "positive_int"]


def duration(value: object, name: str, *, allow_zero: bool = True) -> float:
    """Return `value` (seconds or a timedelta) as float seconds, or raise a clear error."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds or a datetime.timedelta, got {value!r}"
        )
    seconds = float(value)
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} seconds, got {value!r}")
    return seconds


def optional_duration(value: object, name: str, *, allow_zero: bool = True) -> float | None:
    """Like :func:`duration`, with None passed through."""
    return None if value is None else duration(value, name, allow_zero=allow_zero)


def positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return `value` as an int >= `minimum`, or raise a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def backoff_pair(value: object) -> tuple[float, float]:
    """Return a ``(base, cap)`` backoff as float seconds, or raise a clear error."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"backoff must be a (base, cap) pair of seconds, got {value!r}")
    base = duration(value[0], "backoff base")
    cap = duration(value[1], "backoff cap")
    if cap < base:
        raise ValueError(f"backoff cap must be >= its base, got {value!r}")
    return base, cap
