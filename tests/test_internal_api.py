"""The modules of pywork talk through named APIs: no module uses another module's _private names.

The check walks the source with :mod:`ast`. A name is private when it starts with one
underscore (dunders are not private). A module may use:

- its own private names: module-level names, classes, functions, methods and the
  attributes it assigns on ``self``/``cls`` or lists in ``__slots__``;
- private attributes of ``self``, ``cls`` and ``super()``;
- private attributes of other objects whose name the module itself defines (an object of
  another class of the same module);
- public names of a private-named module (``from pywork._durations import duration``).

Anything else is a cross-module private use: ``from pywork.worker import _x``,
``worker._x`` on an imported module, ``obj._x`` (or ``getattr(obj, "_x")``) where ``_x``
is not defined in the module at all.

The import graph must stay acyclic (``TYPE_CHECKING`` imports included), and the core
modules that only need a worker's shape (job, schedule, consumer) must not import
``pywork.worker``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import pywork
from pywork.consumer import Host
from pywork.job import WorkerLike
from pywork.schedule import Runner
from pywork.worker import Worker

PACKAGE = Path(pywork.__file__).resolve().parent
ROOT = PACKAGE.parent
BROKERS = PACKAGE / "brokers"

#: the namedtuple API: public, underscored only to stay clear of field names
NAMEDTUPLE_API = frozenset({"_asdict", "_field_defaults", "_fields", "_make", "_replace"})


def is_private(name: str) -> bool:
    """True for ``_name`` and ``__name`` (not for dunders such as ``__init__``)."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of the module in `path` (a file under `root`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass
class Module:
    """One source file of the package, parsed."""

    path: Path
    name: str
    tree: ast.Module
    is_package: bool
    root: Path

    @classmethod
    def load(cls, path: Path, root: Path = ROOT, source: str | None = None) -> Module:
        text = path.read_text() if source is None else source
        return cls(
            path,
            module_name(path, root),
            ast.parse(text, str(path)),
            path.name == "__init__.py",
            root,
        )

    def resolve(self, node: ast.ImportFrom) -> str:
        """The absolute module name of a ``from ... import`` (relative ones resolved)."""
        if not node.level:
            return node.module or ""
        package = self.name.split(".") if self.is_package else self.name.split(".")[:-1]
        base = package[: len(package) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def is_module(self, dotted: str) -> bool:
        """True when `dotted` names a module or package of the source tree."""
        where = self.root.joinpath(*dotted.split("."))
        return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


@dataclass
class Scan:
    """What one module defines, and the private names of others it uses."""

    module: Module
    defined: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)  # local names bound to pywork modules
    violations: list[str] = field(default_factory=list)

    def run(self) -> list[str]:
        self._collect()
        for node in ast.walk(self.module.tree):
            if isinstance(node, ast.ImportFrom):
                self._check_import(node)
            elif isinstance(node, ast.Attribute) and is_private(node.attr):
                self._check_attribute(node.value, node.attr, node)
            elif isinstance(node, ast.Call) and _is_attribute_call(node):
                name = node.args[1]
                assert isinstance(name, ast.Constant) and isinstance(name.value, str)
                if is_private(name.value):
                    self._check_attribute(node.args[0], name.value, node)
        return self.violations

    def _collect(self) -> None:
        for node in ast.walk(self.module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.defined.add(node.name)
            elif isinstance(node, ast.arg):
                self.defined.add(node.arg)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                self.defined.add(node.id)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                self.defined.add(node.attr)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                self._collect_slots(node)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "pywork":
                        self.modules.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                base = self.module.resolve(node)
                for alias in node.names:
                    if alias.asname is not None:
                        self.defined.add(alias.asname)
                    if base.split(".")[0] == "pywork" and self.module.is_module(
                        f"{base}.{alias.name}"
                    ):
                        self.modules.add(alias.asname or alias.name)

    def _collect_slots(self, node: ast.Assign | ast.AnnAssign) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if node.value is None or not any(
            isinstance(t, ast.Name) and t.id == "__slots__" for t in targets
        ):
            return
        for item in ast.walk(node.value):
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                self.defined.add(item.value)

    def _check_import(self, node: ast.ImportFrom) -> None:
        base = self.module.resolve(node)
        if base.split(".")[0] != "pywork":
            return
        for alias in node.names:
            if is_private(alias.name) and not self.module.is_module(f"{base}.{alias.name}"):
                self._report(node, f"from {base} import {alias.name}")

    def _check_attribute(self, base: ast.expr, attr: str, node: ast.AST) -> None:
        if isinstance(base, ast.Name) and base.id in self.modules:
            self._report(node, f"{base.id}.{attr}: a private name of module {base.id}")
            return
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            return
        if (
            isinstance(base, ast.Call)
            and isinstance(base.func, ast.Name)
            and base.func.id == "super"
        ):
            return
        if attr in self.defined or attr in NAMEDTUPLE_API:
            return
        self._report(node, f"{ast.unparse(base)}.{attr}: {attr} is not defined in this module")

    def _report(self, node: ast.AST, what: str) -> None:
        where = self.module.path.relative_to(self.module.root)
        self.violations.append(f"{where}:{getattr(node, 'lineno', 0)}: {what}")


def _is_attribute_call(node: ast.Call) -> bool:
    """``getattr/setattr/hasattr/delattr(obj, "name", ...)`` with a literal name."""
    return (
        isinstance(node.func, ast.Name)
        and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
        and len(node.args) >= 2
        and isinstance(node.args[1], ast.Constant)
        and isinstance(node.args[1].value, str)
    )


def sources(*, brokers: bool) -> Iterator[Path]:
    """The package's source files, inside or outside ``pywork/brokers``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if (BROKERS in path.parents) is brokers:
            yield path


def violations(paths: Iterator[Path]) -> list[str]:
    found: list[str] = []
    for path in paths:
        found.extend(Scan(Module.load(path)).run())
    return found


def check_source(source: str, name: str = "pywork/probe.py") -> list[str]:
    """Scan `source` as if it were the module at `name` of the package."""
    return Scan(Module.load(ROOT / name, source=textwrap.dedent(source))).run()


# the checker itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "from pywork.worker import _check_source",
        "from ..worker import _check_source",
        "from pywork import worker\nworker._check_source(1)",
        "import pywork.worker as w\nw._shutdown_pool",
        "def f(worker):\n    return worker._launch()",
        "def f(worker):\n    worker._number = 1",
        "def f(ctx):\n    return getattr(ctx, '_status')",
        "class A:\n    def f(self):\n        return self.worker._forget",
        "def f(pool):\n    return pool._threads",
    ],
)
def test_the_checker_flags_cross_module_private_uses(source: str) -> None:
    assert len(check_source(source, "pywork/sub/probe.py")) == 1, source


@pytest.mark.parametrize(
    "source",
    [
        "from pywork._durations import duration",
        "from pywork.middleware import _common",
        "class A:\n    def f(self):\n        self._x = 1\n        return self._x, self._y",
        "class A:\n    @classmethod\n    def f(cls):\n        return cls._registry",
        "class A:\n    def f(self):\n        return super()._g()",
        "class A:\n    __slots__ = ('_a',)\n\ndef f(a):\n    return a._a",
        "class A:\n    def _g(self): ...\n\ndef f(a):\n    return a._g()",
        "class A:\n    def __init__(self):\n        self._v = 1\n\ndef f(a):\n    a._v = 2",
        "def f(parts):\n    return parts._replace(netloc='x')",
        "def f(x):\n    return x.__class__, x.__dict__",
    ],
)
def test_the_checker_allows_own_private_names(source: str) -> None:
    assert check_source(source) == [], source


# the package ----------------------------------------------------------------------------


def test_no_module_uses_another_modules_private_names() -> None:
    found = violations(sources(brokers=False))
    assert not found, "cross-module private uses:\n" + "\n".join(found)


def test_no_broker_module_uses_another_modules_private_names() -> None:
    found = violations(sources(brokers=True))
    assert not found, "cross-module private uses in pywork/brokers:\n" + "\n".join(found)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (lazy and TYPE_CHECKING imports included)."""
    modules = {module_name(p): Module.load(p) for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, module in modules.items():
        deps: set[str] = set()
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = module.resolve(node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in modules:
                        deps.add(f"{base}.{alias.name}")  # a submodule
                    elif base in modules:
                        deps.add(base)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles (TYPE_CHECKING imports included):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["job", "schedule", "handler", "types", "consumer"])
def test_importing_a_core_module_does_not_import_the_worker(module: str) -> None:
    # `import pywork.job` runs pywork/__init__.py first, which imports everything: the
    # probe registers a bare `pywork` package so that only the module's own imports run
    probe = textwrap.dedent(
        f"""
        import importlib.util, sys, types
        spec = importlib.util.find_spec("pywork")
        package = types.ModuleType("pywork")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["pywork"] = package
        import pywork.{module}
        loaded = sorted(m for m in sys.modules if m.startswith("pywork."))
        assert "pywork.worker" not in sys.modules, loaded
        print(" ".join(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert f"pywork.{module}" in result.stdout.split()


def test_the_worker_implements_the_protocols_its_modules_use() -> None:
    # static: mypy checks these assignments; at run time they are plain objects
    worker = Worker()
    as_context_sees_it: WorkerLike = worker
    as_schedules_see_it: Runner = worker
    as_consumers_see_it: Host = worker
    assert as_context_sees_it is as_schedules_see_it is as_consumers_see_it is worker
