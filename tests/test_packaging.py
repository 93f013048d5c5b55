"""The wheel ships what the package loads at run time: Lua scripts, SQL queries, py.typed."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "pywork"


def test_the_wheel_holds_every_script_and_query_file(tmp_path: Path) -> None:
    resources = sorted(
        path.relative_to(PACKAGE.parent).as_posix()
        for pattern in ("*.lua", "*.sql")
        for path in PACKAGE.rglob(pattern)
    )
    assert any(name.endswith(".lua") for name in resources), resources
    assert sum(name.endswith(".sql") for name in resources) >= 2, resources
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        check=True,
        timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("pywork-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "pywork/py.typed" in names
    missing = [name for name in resources if name not in names]
    assert not missing, f"not in {wheel.name}: {missing}"
