"""The README's complete Python programs run as shown."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
APP = next(block for block in BLOCKS if block.startswith("# app.py"))
PROGRAMS = [b for b in BLOCKS if "asyncio.run(" in b and "port=9000" not in b]


def test_readme_has_programs() -> None:
    assert len(PROGRAMS) >= 4


@pytest.mark.parametrize("source", PROGRAMS, ids=[f"program{i}" for i in range(len(PROGRAMS))])
def test_readme_program_runs(source: str, tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "program.py").write_text(source)
    done = subprocess.run(
        [sys.executable, "program.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for expected in re.findall(r"# (SUCCESS|BAD_REQUEST)\b", source):
        assert expected in done.stdout
