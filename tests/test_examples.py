"""The examples in examples/ run, end by themselves and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str, timeout: float = 60.0) -> str:
    """Run examples/`name` with `args` in a fresh interpreter; return its stdout."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    return result.stdout


def test_demo_prints_a_table_of_every_outcome_with_percentiles() -> None:
    # Given a short, seeded run with the default 8 ramping workers
    out = run_example("demo.py", "--seconds", "2.5", "--seed", "7")
    # Then the table has a row per outcome the handler can produce, and the totals
    for status in ("200 SUCCESS", "444 NO_RESPONSE", "400 BAD_REQUEST", "408 TIMEOUT"):
        assert status in out, out
    assert "500 INTERNAL_ERROR" in out, out
    for column in ("count", "p50 ms", "p90 ms", "p99 ms", "max ms"):
        assert column in out, out
    match = re.search(r"pywork demo: (\d+) jobs in [\d.]+s on 8 workers \(([\d.]+) jobs/s\)", out)
    assert match is not None, out
    assert int(match.group(1)) > 20
    # And a timed-out job took about job.timeout (0.25 s), not the 1 s it slept
    timeout_row = next(line for line in out.splitlines() if "408 TIMEOUT" in line)
    max_ms = float(timeout_row.split()[-2])
    assert 240 <= max_ms < 900, timeout_row


def test_periodic_runs_every_worker_and_early_workers_run_more() -> None:
    # Given 10 workers started 50 ms apart, each running every 0.2 s for 1.2 s
    out = run_example("periodic.py", "--seconds", "1.2", "--every", "0.2", "--workers", "10")
    runs = {int(n): int(r) for n, r in re.findall(r"worker\s+(\d+):\s+(\d+) runs", out)}
    # Then every worker ran, worker 1 about 1.2/0.2 + 1 times, and none more often than it
    assert sorted(runs) == list(range(1, 11)), out
    assert all(count >= 1 for count in runs.values()), out
    assert 4 <= runs[1] <= 8, out
    assert max(runs.values()) == runs[1], out
    assert runs[1] >= runs[10], out
    assert f"{sum(runs.values())} runs by 10 workers" in out


def test_outbox_publishes_every_message_once_and_reports_idle_polls() -> None:
    # Given a producer writing bursts for 1 s and 3 pollers
    out = run_example("outbox.py", "--seconds", "1", "--pollers", "3", "--seed", "3")
    match = re.search(r"produced (\d+), published (\d+), pending 0, duplicates 0", out)
    # Then everything produced was published exactly once
    assert match is not None, out
    assert match.group(1) == match.group(2) and int(match.group(1)) > 0
    # And both busy polls (SUCCESS) and idle polls (NO_RESPONSE) are counted
    assert re.search(r"200 SUCCESS\s+\d+", out), out
    assert re.search(r"444 NO_RESPONSE\s+\d+", out), out
