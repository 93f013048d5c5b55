"""examples/observability.py runs by itself, serves the ops app and prints scraped metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "observability.py"


def test_observability_example_prints_scraped_metrics_that_match_its_runs() -> None:
    # When the example runs with its defaults (50 workers, 50 ms on-ramp, 3 s)
    t0 = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    took = time.monotonic() - t0
    # Then it ends by itself, cleanly, within a few seconds
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    assert took < 30, took
    out = result.stdout
    assert re.search(r"^ops app on http://127\.0\.0\.1:\d+$", out, re.M), out
    # And /ready and / answered while the 50 workers ran
    assert "GET /ready -> 200 OK" in out, out
    summary = re.search(r"GET / -> ConcurrentJob\(report\): (\d+) workers, health 200", out)
    assert summary is not None and int(summary.group(1)) == 50, out
    # And the scraped counters hold both status codes, summing to the runs started
    counts = {
        code: float(value)
        for code, value in re.findall(
            r'pywork_requests_total\{code="(\d+)",handler="report"\} ([\d.]+)', out
        )
    }
    assert set(counts) == {"200", "500"}, out
    runs = int(re.search(r"executions started: (\d+)", out).group(1))  # type: ignore[union-attr]
    assert runs > 100
    assert sum(counts.values()) == runs
    assert f"executions counted by Prometheus: {runs}" in out
    assert f'pywork_request_duration_seconds_count{{handler="report"}} {runs}.0' in out
    assert 'pywork_in_progress{handler="report"} 0.0' in out
    # And one aggregated log record per execution, the failed ones with their error
    assert f"aggregated log records: {runs}" in out
    failed = json.loads(out.split("a failed run's log record: ", 1)[1].splitlines()[0])
    assert failed["status"] == 500
    assert failed["worker_number"] % 10 == 0
    assert failed["error"].startswith("InternalError: ")
    assert [entry["level"] for entry in failed["entries"]] == ["INFO"]
