"""Every Python sample of docs/schedules.md runs and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "schedules.md"
SAMPLES = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def expected_output(sample: str) -> list[str]:
    """The `# value` comments of the sample's print() lines, in order."""
    return [m.group(1) for m in re.finditer(r"^\s*print\(.*\)\s+# (.+)$", sample, re.M)]


def test_the_page_has_samples() -> None:
    assert len(SAMPLES) >= 2
    assert all(expected_output(sample) for sample in SAMPLES)


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample{i}" for i in range(len(SAMPLES))])
def test_sample_runs_and_prints_what_it_says(sample: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", sample], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    printed = result.stdout.splitlines()
    assert printed == expected_output(sample), result.stdout
