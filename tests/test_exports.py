"""The public surface: ``pywork.__all__`` is sorted, complete and resolvable."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pywork

# Every name contract sections 1-5 make importable from `pywork` itself.
CONTRACT_NAMES = {
    "AGGREGATE_LOGGER",
    "Adapter",
    "BadRequest",
    "Channel",
    "ChannelClosed",
    "ChannelFull",
    "ConcurrentJob",
    "Context",
    "Execution",
    "Forbidden",
    "Handler",
    "HandlerAlreadyRegistered",
    "HandlerNotFound",
    "InternalError",
    "Job",
    "JobError",
    "JobTimeout",
    "NoResponse",
    "NotFound",
    "PerformWith",
    "REQUEST_SIZE",
    "RESPONSE_SIZE",
    "Schedule",
    "SerializationError",
    "Status",
    "TRACING_CONTEXT",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "Worker",
    "WorkerNotRunning",
    "adapt",
}


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then everything else."""
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_without_duplicates() -> None:
    assert len(set(pywork.__all__)) == len(pywork.__all__)
    assert pywork.__all__ == sorted(pywork.__all__, key=isort_key)


def test_every_name_in_all_resolves() -> None:
    for name in pywork.__all__:
        assert getattr(pywork, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from pywork import *", namespace)
    assert set(pywork.__all__) <= set(namespace)


def test_all_is_complete() -> None:
    """Every public class or function pywork defines and exposes is listed in __all__."""
    missing = []
    for name, obj in vars(pywork).items():
        if name.startswith("_") or inspect.ismodule(obj):
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", "").split(".")[0] == "pywork" and name not in pywork.__all__:
            missing.append(name)
    assert missing == []


def test_contract_names_are_exported() -> None:
    assert set(pywork.__all__) >= CONTRACT_NAMES


def test_exported_classes_and_functions_are_pyworks_own() -> None:
    for name in pywork.__all__:
        obj = getattr(pywork, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.split(".")[0] == "pywork", name
            assert obj.__name__ == name, name


def test_public_classes_and_functions_have_docstrings() -> None:
    for name in pywork.__all__:
        obj = getattr(pywork, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_version() -> None:
    assert isinstance(pywork.__version__, str)
    assert pywork.__version__.count(".") >= 2


def test_import_pywork_needs_no_optional_dependency() -> None:
    optional = ["redis", "asyncpg", "prometheus_client", "opentelemetry", "starlette", "uvicorn"]
    code = f"import sys, pywork\nprint(','.join(m for m in {optional!r} if m in sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
