"""Every Python sample of the docs pages runs and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def expected_output(sample: str) -> list[str]:
    """The `# value` comments of the sample's print() lines, in order."""
    return [m.group(1) for m in re.finditer(r"^\s*print\(.*\)\s+# (.+)$", sample, re.M)]


SAMPLES = [
    (page.name, index, sample)
    for page in PAGES
    for index, sample in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
    # complete programs (they run the loop or say what they print); fragments are for reading
    if "asyncio.run(" in sample or expected_output(sample)
]


def test_the_pages_have_samples() -> None:
    pages = {name for name, _, _ in SAMPLES}
    assert {"brokers.md", "deploy.md", "observability.md", "schedules.md", "workers.md"} <= pages


@pytest.mark.parametrize(
    "sample", [s for _, _, s in SAMPLES], ids=[f"{name}-{i}" for name, i, _ in SAMPLES]
)
def test_sample_runs_and_prints_what_it_says(sample: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", sample], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    printed = result.stdout.splitlines()
    for value in expected_output(sample):
        assert value in printed, (value, result.stdout)
