"""Named queries and scripts shipped as files inside the package.

A backend keeps its SQL in a ``.sql`` file (and Redis its Lua in ``.lua`` files) next to
its code, reviewable with their own syntax highlighting. In a ``.sql`` file each query
starts with a header line ``-- name: <query_name>``; the lines up to the next header are
its text (comments and blank lines around it dropped)::

    -- name: get
    -- The record of one job.
    SELECT ... FROM {schema}.jobs WHERE id = $1

Placeholders in braces (``{schema}``) are filled by the backend with ``str.format``.
"""

from __future__ import annotations

import re
from importlib import resources

__all__ = ["load_queries", "read_resource"]

_HEADER = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


def read_resource(package: str, name: str) -> str:
    """The text of the file `name` shipped inside `package` (``importlib.resources``)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")


def load_queries(package: str, name: str) -> dict[str, str]:
    """Parse the ``.sql`` file `name` of `package` into ``{query name: text}``.

    Raises:
        ValueError: text before the first header, a name given twice, or an empty query.
    """
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(read_resource(package, name).splitlines(), 1):
        header = _HEADER.match(line)
        if header is not None:
            query = header.group(1)
            if query in queries:
                raise ValueError(f"{name}:{number}: query {query!r} is defined twice")
            current = queries[query] = []
        elif line.strip() and not line.lstrip().startswith("--"):
            if current is None:
                raise ValueError(f"{name}:{number}: SQL before the first '-- name:' header")
            current.append(line)
    empty = [query for query, lines in queries.items() if not lines]
    if empty:
        raise ValueError(f"{name}: queries without text: {', '.join(empty)}")
    return {query: "\n".join(lines) for query, lines in queries.items()}
