"""Argument checks shared by the Worker and ConcurrentJob (internal to pywork)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable, Sequence

from pywork.channel import Channel
from pywork.job import MAX_NAME_LENGTH

__all__ = ["check_adapters", "check_handler_name", "check_source"]


def check_handler_name(name: object) -> None:
    """Raise TypeError/ValueError unless `name` is a non-empty str of at most
    :data:`~pywork.job.MAX_NAME_LENGTH` characters."""
    if not isinstance(name, str):
        raise TypeError(f"handler name must be a str, got {name!r}")
    if not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"handler name must be a non-empty str of at most {MAX_NAME_LENGTH} characters, "
            f"got {name!r:.80}"
        )


def check_adapters(adapters: Sequence[object]) -> None:
    """Raise TypeError unless every one of `adapters` is callable."""
    for adapter in adapters:
        if not callable(adapter):
            raise TypeError(
                f"an adapter must be a callable taking a handler and returning one, got {adapter!r}"
            )


def check_source(source: object) -> None:
    """Raise TypeError unless `source` is something ``perform_receive`` can receive from:
    a Channel, an async iterable or an iterable (not a str or bytes)."""
    if isinstance(source, str | bytes | bytearray) or not isinstance(
        source, Channel | AsyncIterable | Iterable
    ):
        raise TypeError(
            "source must be a pywork.Channel, an async iterable or an iterable "
            f"(not a str or bytes), got {source!r}"
        )
