"""``pywork worker --processes N``: the supervisor and its children, driven for real."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from pywork.supervisor import ParentWatch
from tests.servers import PostgresServer
from tests.test_cli import Cli, Procs, children_of, stop_all, wait_until

__all__ = ["stop_all"]

BROKEN_APP = "import nosuchdependency\n"


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie left to an init that does not reap counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_children_exit_within_10s_of_the_supervisors_kill_9(
    tmp_path: Path, stop_all: Procs
) -> None:
    # Given a supervisor with two consuming children, one of them running a long job
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'orphans.db'}")
    job_id = cli.enqueue("slow", {"seconds": 60})
    supervisor = cli.start("worker", "cliapp:worker", "--processes", "2", "--lease", "2")
    stop_all.append(supervisor)
    wait_until(lambda: (cli.out / f"started-{job_id}").exists(), 30, "the slow job to start")
    kids = children_of(supervisor.pid)
    assert len(kids) == 2

    # When the supervisor is killed with SIGKILL
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(10)
    began = time.monotonic()

    # Then both children exit within 10 s, and the cut-short job goes back to the queue
    wait_until(lambda: all(gone(pid) for pid in kids), 10, "the orphaned children to exit")
    assert time.monotonic() - began < 10
    record = cli.status(job_id)
    assert record["state"] in ("queued", "running"), record


def test_parent_watch_notices_the_closed_pipe(tmp_path: Path) -> None:
    # Given a watch on the read end of a pipe whose write end stands for the supervisor
    read, write = os.pipe()
    lost = threading.Event()
    watch = ParentWatch(read, lost.set, hard_exit_after=None)
    watch.start()
    assert not lost.wait(0.2)

    # When the supervisor's end closes (however it died)
    os.close(write)

    # Then the watch reports it
    assert lost.wait(5), "the watch did not notice the supervisor's death"
    assert watch.lost
    watch.close()


@pytest.mark.parametrize(
    ("app", "extra", "code", "message"),
    [
        ("nosuch:worker", [], 2, "cannot import module 'nosuch'"),
        ("brokenapp:worker", [], 1, "while importing APP 'brokenapp:worker'"),
        ("cliapp:worker", ["--broker", "redis://127.0.0.1:1/0"], 2, "127.0.0.1:1"),
    ],
)
def test_a_child_failing_before_it_consumed_stops_the_group(
    tmp_path: Path, stop_all: Procs, app: str, extra: list[str], code: int, message: str
) -> None:
    # Given a startup mistake every child makes
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'startup.db'}")
    (tmp_path / "brokenapp.py").write_text(BROKEN_APP)

    # When the supervisor starts two children
    began = time.monotonic()
    supervisor = cli.start("worker", app, "--processes", "2", *extra)
    stop_all.append(supervisor)
    output, _ = supervisor.communicate(timeout=30)

    # Then it stops them and exits with the child's code within 20 s, saying why
    assert time.monotonic() - began < 20, output
    assert supervisor.returncode == code, output
    assert message in output
    assert "restarting" not in output
    assert "before it consumed" in output


def test_sigterm_exits_0_while_a_child_waits_to_be_restarted(
    tmp_path: Path, stop_all: Procs
) -> None:
    # Given a supervisor whose child was just killed (its restart is pending)
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'pending.db'}")
    supervisor = cli.start("worker", "cliapp:worker", "--processes", "2")
    stop_all.append(supervisor)
    assert supervisor.stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(supervisor.stdout or ()), daemon=True)
    reader.start()
    wait_until(lambda: sum("consuming" in line for line in lines) == 2, 30, "two consumers")
    victim = children_of(supervisor.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: any("restarting in" in line for line in lines), 10, "a pending restart")

    # When the supervisor gets SIGTERM before the restart
    supervisor.send_signal(signal.SIGTERM)

    # Then it exits 0
    assert supervisor.wait(30) == 0, "".join(lines)
    reader.join(10)
    supervisor.stdout.close()


def test_the_children_get_the_broker_url_by_the_environment_not_the_command_line(
    tmp_path: Path, stop_all: Procs, postgres_server: PostgresServer
) -> None:
    # Given a broker URL with a password (the test server trusts loopback: it is ignored)
    url = postgres_server.url.replace("postgres@", "postgres:s3cret-pw@") + "?schema=ps"
    cli = Cli(tmp_path, "sqlite:///unused.db")
    job_id = cli.run("enqueue", "echo", "--args", '{"n": 1}', "--broker", url).stdout.strip()

    # When a supervisor runs two children with --broker on its own command line
    supervisor = cli.start("worker", "cliapp:worker", "--processes", "2", "--broker", url)
    stop_all.append(supervisor)
    wait_until(lambda: (cli.out / job_id).exists(), 60, "the job to run")
    kids = children_of(supervisor.pid)

    # Then no child's command line shows the password, and the job ran on that broker
    assert len(kids) == 2
    for pid in kids:
        assert b"s3cret-pw" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    supervisor.send_signal(signal.SIGTERM)
    output, _ = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 0, output
    assert "s3cret-pw" not in output
