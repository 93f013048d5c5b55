"""Named queries in .sql files: the loader, and every backend's files parse."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pywork.brokers import queries


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A throwaway package on sys.path to hold test .sql files: (its name, its folder)."""
    name = f"sqlpkg_{uuid.uuid4().hex}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, root


def test_queries_are_split_at_their_name_headers(package: tuple[str, Path]) -> None:
    name, folder = package
    (folder / "q.sql").write_text(
        "-- a file comment\n\n-- name: get\n-- the record\nSELECT *\nFROM {schema}.jobs\n\n"
        "-- name: count\nSELECT count(*) FROM jobs\n"
    )
    assert queries.load_queries(name, "q.sql") == {
        "get": "SELECT *\nFROM {schema}.jobs",
        "count": "SELECT count(*) FROM jobs",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1\n-- name: a\nSELECT 2\n", "before the first"),
        ("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "defined twice"),
        ("-- name: a\n-- nothing\n-- name: b\nSELECT 2\n", "without text: a"),
    ],
)
def test_a_malformed_file_is_refused_with_its_line(
    package: tuple[str, Path], text: str, message: str
) -> None:
    name, folder = package
    (folder / "bad.sql").write_text(text)
    with pytest.raises(ValueError, match=message):
        queries.load_queries(name, "bad.sql")
