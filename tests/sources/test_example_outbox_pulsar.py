"""examples/outbox_pulsar.py end to end: SQLite (and PostgreSQL) outbox -> Pulsar -> consumer."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.servers import PostgresServer, PulsarLiteServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "outbox_pulsar.py"


def run_example(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert result.returncode == 0, f"exited {result.returncode}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_outbox_rows_are_published_to_pulsar_and_consumed_once(
    pulsar_server: PulsarLiteServer,
) -> None:
    out = run_example("--service-url", pulsar_server.url, "--orders", "40", "--pollers", "3")
    assert "published 40 orders in " in out, out
    assert "consumed 40 orders, each once: True" in out, out
    assert "left in the outbox: 0" in out, out
    idle = int(out.split("idle polls (444 NO_RESPONSE): ")[1].split()[0])
    assert idle >= 1, out  # the pollers also ran while the outbox was empty


def test_the_outbox_can_be_a_postgresql_table(
    pulsar_server: PulsarLiteServer, postgres_server: PostgresServer
) -> None:
    out = run_example(
        "--service-url", pulsar_server.url, "--database", postgres_server.url, "--orders", "20"
    )
    assert "consumed 20 orders, each once: True" in out, out
    assert "left in the outbox: 0" in out, out
