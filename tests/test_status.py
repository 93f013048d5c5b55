"""Status: the HTTP-like codes and their two classifications (contract §1)."""

from __future__ import annotations

from enum import IntEnum

import pytest

from pywork import Status

EXPECTED = {
    "UNKNOWN": -1,
    "SUCCESS": 200,
    "BAD_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "TIMEOUT": 408,
    "TOO_MANY_REQUESTS": 429,
    "NO_RESPONSE": 444,
    "CANCELLED": 499,
    "INTERNAL_ERROR": 500,
    "UNAVAILABLE": 503,
}
ERRORS = {Status.TIMEOUT, Status.INTERNAL_ERROR, Status.UNAVAILABLE}
RETRYABLE = {
    Status.NOT_FOUND,
    Status.TIMEOUT,
    Status.TOO_MANY_REQUESTS,
    Status.INTERNAL_ERROR,
    Status.UNAVAILABLE,
}


def test_members_and_codes_are_exactly_the_contracts() -> None:
    assert issubclass(Status, IntEnum)
    assert {s.name: int(s) for s in Status} == EXPECTED


def test_status_compares_and_converts_as_an_int() -> None:
    assert Status.SUCCESS == 200  # type: ignore[comparison-overlap]
    assert Status(404) is Status.NOT_FOUND
    assert Status["TIMEOUT"] is Status.TIMEOUT
    assert isinstance(Status.CANCELLED, int)


@pytest.mark.parametrize("status", list(Status), ids=lambda s: s.name)
def test_is_error_is_timeout_and_5xx(status: Status) -> None:
    assert status.is_error is (status in ERRORS)
    assert status.is_error is (status == Status.TIMEOUT or 500 <= status < 600)


@pytest.mark.parametrize("status", list(Status), ids=lambda s: s.name)
def test_is_retryable(status: Status) -> None:
    assert status.is_retryable is (status in RETRYABLE)


def test_classifications_are_read_only() -> None:
    with pytest.raises(AttributeError):
        Status.SUCCESS.is_error = True  # type: ignore[misc]
    with pytest.raises(AttributeError):
        Status.SUCCESS.is_retryable = True  # type: ignore[misc]


def test_success_and_no_response_are_neither_errors_nor_retryable() -> None:
    for status in (Status.SUCCESS, Status.NO_RESPONSE, Status.BAD_REQUEST, Status.CANCELLED):
        assert not status.is_error
        assert not status.is_retryable


def test_coerce_accepts_members_and_codes_and_names_what_is_accepted() -> None:
    assert Status.coerce(Status.SUCCESS) is Status.SUCCESS
    assert Status.coerce(503) is Status.UNAVAILABLE
    for junk in (999, "200", None, True, 200.0):
        with pytest.raises(ValueError, match=r"status must be a pywork\.Status"):
            Status.coerce(junk)
