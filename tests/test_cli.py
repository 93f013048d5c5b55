"""The ``pywork`` console script, driven for real in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import RedisServer, free_port

APP = textwrap.dedent(
    """
    import asyncio, os, pathlib
    from pywork import BadRequest, Job, Worker

    worker = Worker(name="cli-test")
    out = pathlib.Path(os.environ["PYWORK_TEST_OUT"])

    @worker.handler("echo")
    async def echo(job):
        job.ctx.set_progress(1, 1, "echoed")
        (out / job.id).write_text(str(job.args.get("n")))
        return {"n": job.args.get("n")}

    worker.schedule("tick", Job("echo", {"n": 0}), every=3600)

    @worker.handler("reject")
    async def reject(job):
        raise BadRequest("no such user")

    @worker.handler("slow")
    async def slow(job):
        (out / f"started-{job.id}").write_text("")
        await asyncio.sleep(job.args.get("seconds", 1.0))
        (out / job.id).write_text("done")

    def helper(job):
        return None
    """
)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Cli:
    """Runs ``python -m pywork`` with the test app importable and a broker set."""

    def __init__(self, tmp_path: Path, broker: str) -> None:
        (tmp_path / "cliapp.py").write_text(APP)
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.cwd = tmp_path
        self.env = {
            **os.environ,
            "PYWORK_BROKER": broker,
            "PYWORK_TEST_OUT": str(self.out),
            "PYTHONUNBUFFERED": "1",
        }

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pywork", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pywork", *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def enqueue(self, handler: str, payload: dict[str, object]) -> str:
        done = self.run("enqueue", handler, "--args", json.dumps(payload))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def status(self, job_id: str) -> dict[str, object]:
        done = self.run("status", job_id, "--json")
        assert done.returncode == 0, done.stderr
        record: dict[str, object] = json.loads(done.stdout)
        return record


Procs = list[subprocess.Popen[str]]


@pytest.fixture
def stop_all() -> Iterator[Procs]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Cli:
    if request.param == "sqlite":
        return Cli(tmp_path, f"sqlite:///{tmp_path / 'cli.db'}")
    server: RedisServer = request.getfixturevalue("redis_server")
    return Cli(tmp_path, f"{server.url}?prefix=cli{os.getpid()}{time.monotonic_ns()}")


def test_enqueue_worker_status_round_trip(cli: Cli, stop_all: Procs) -> None:
    job_id = cli.enqueue("echo", {"n": 7})
    assert len(job_id) == 32
    assert cli.status(job_id)["state"] == "queued"
    worker = cli.start("worker", "cliapp:worker", "--concurrency", "4")
    stop_all.append(worker)
    wait_until(lambda: (cli.out / job_id).exists(), 30, "the job to run")
    wait_until(lambda: cli.status(job_id)["state"] == "succeeded", 30, "the record to settle")
    record = cli.status(job_id)
    assert record["status"] == 200 and record["attempts"] == 1
    assert record["result"] == {"n": 7}
    assert isinstance(record["progress"], dict) and record["progress"]["message"] == "echoed"
    text = cli.run("status", job_id).stdout
    assert 'result       {"n": 7}' in text and "progress     1/1 (100%) echoed" in text
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    banner = output.splitlines()[0]
    assert "pywork" in banner and "queues=default" in banner and "echo" in banner


def test_sigterm_drains_running_job(tmp_path: Path, stop_all: Procs) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'drain.db'}")
    job_id = cli.enqueue("slow", {"seconds": 1.0})
    worker = cli.start("worker", "cliapp:worker", "--drain-timeout", "10")
    stop_all.append(worker)
    wait_until(lambda: (cli.out / f"started-{job_id}").exists(), 30, "the slow job to start")
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    assert time.monotonic() - began < 10
    assert (cli.out / job_id).read_text() == "done"
    assert cli.status(job_id)["state"] == "succeeded"


def children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_processes_restart_killed_child(tmp_path: Path, stop_all: Procs) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'procs.db'}")
    ids = [cli.enqueue("slow", {"seconds": 0.05}) for _ in range(3)]
    supervisor = cli.start("worker", "cliapp:worker", "--processes", "2", "--lease", "2")
    stop_all.append(supervisor)
    wait_until(lambda: len(children_of(supervisor.pid)) == 2, 30, "two child processes")
    victim = children_of(supervisor.pid)[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(children_of(supervisor.pid)) == 2 and victim not in children_of(supervisor.pid),
        30,
        "the supervisor to replace the killed child",
    )
    ids += [cli.enqueue("echo", {"n": n}) for n in range(20)]
    wait_until(lambda: all((cli.out / i).exists() for i in ids), 60, "every job to run")
    supervisor.send_signal(signal.SIGTERM)
    output, _ = supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0, output
    assert "restarting" in output


def test_http_serves_metrics_and_ready(tmp_path: Path, stop_all: Procs) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'http.db'}")
    job_id = cli.enqueue("echo", {"n": 1})
    port = free_port()
    worker = cli.start("worker", "cliapp:worker", "--http", f"127.0.0.1:{port}")
    stop_all.append(worker)
    wait_until(lambda: (cli.out / job_id).exists(), 30, "the job to run")

    def scraped() -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        return 'code="200"' in text and 'handler="echo"' in text

    wait_until(scraped, 30, "/metrics to count the job")
    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
    assert ready.status_code == 200 and ready.text == "OK"
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=30)
    assert worker.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "nosuchmodule:worker"], "cannot import module 'nosuchmodule'"),
        (["worker", "cliapp"], "module:attribute"),
        (["worker", "cliapp:nope"], "has no attribute 'nope'"),
        (["enqueue", "echo", "--args", "{bad"], "--args is not valid JSON"),
        (["enqueue", "echo", "--args", "[1]"], "must be a JSON object"),
        (["queues", "--broker", "ftp://x"], "supported schemes"),
        (["queues", "--broker", "redis://127.0.0.1:1/0"], "127.0.0.1:1"),
        (["queues", "--broker", "redis://:s3cret@127.0.0.1:1/0"], "127.0.0.1:1"),
        (["queues", "--broker", "postgresql://app:s3cret@127.0.0.1:1/db"], "127.0.0.1:1"),
        (["enqueue", "e", "--broker", "sqlite:////nonexistent/dir/x.db"], "/nonexistent/dir/x.db"),
        (["enqueue", "echo", "--delay", "-1"], "expected seconds >= 0"),
        (["worker", "cliapp:echo"], "names the handler 'echo', not a pywork.Worker"),
        (["worker", "cliapp:helper"], "did you mean 'cliapp:worker'"),
        (["worker", "cliapp:worker", "--lease", "0"], "--lease: expected seconds > 0"),
        (["worker", "cliapp:worker", "--lease", "-1"], "--lease: expected seconds > 0"),
        (["worker", "cliapp:worker", "--max-retries", "-1"], "--max-retries: expected an int"),
        (["worker", "cliapp:worker", "--drain-timeout", "nan"], "--drain-timeout: expected"),
        (["worker", "cliapp:worker", "--concurrency", "0"], "--concurrency: expected an int"),
        (["worker", "cliapp:worker", "--processes", "0"], "--processes: expected an integer"),
        (["worker", "cliapp:worker", "--queues", " , "], "--queues: expected queue names"),
        (["worker", "cliapp:worker", "--processes", "2", "--lease", "0"], "--lease: expected"),
        (["queues", "--interval", "0"], "--interval: expected seconds > 0"),
        (["enqueue", "echo", "--timeout", "0"], "--timeout: expected seconds > 0"),
        (["enqueue", "echo", "--max-retries", "-2"], "--max-retries: expected an integer"),
        (["worker", "cliapp:worker", "--broker", "sqlite:///nodir/x.db"], "/nodir/x.db"),
        (["worker", "cliapp:worker", "--broker", "redis://127.0.0.1:1/x"], "is a number"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'usage.db'}")
    done = cli.run(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert "s3cret" not in done.stderr
    assert "pywork 0" not in done.stdout, "the banner came before the usage error"
    if "nodir" in message:
        assert str(tmp_path / "nodir" / "x.db") in lines[0]


def test_queues_and_dead_letters(tmp_path: Path) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'dead.db'}")
    cli.enqueue("echo", {"n": 1})
    table = cli.run("queues")
    assert table.returncode == 0 and "default" in table.stdout and "queued" in table.stdout
    listed = cli.run("dead", "list", "--json")
    assert listed.returncode == 0 and listed.stdout == ""
    purged = cli.run("dead", "purge")
    assert purged.returncode == 0 and "purged 0" in purged.stdout
    missing = cli.run("dead", "retry", "0" * 32)
    assert missing.returncode == 1


def test_demo_completes_and_prints_summary(tmp_path: Path) -> None:
    cli = Cli(tmp_path, "memory://")
    done = cli.run("demo", "--jobs", "400", timeout=90)
    assert done.returncode == 0, done.stderr
    assert "pywork demo: summary" in done.stdout
    assert "state succeeded" in done.stdout and "state dead" in done.stdout
    assert "runs/s" in done.stdout


def test_schedules_lists_declared_schedules(tmp_path: Path, stop_all: Procs) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'sched.db'}")
    cli.enqueue("echo", {"n": 1})  # the database exists
    empty = cli.run("schedules")
    assert empty.returncode == 0 and "(no schedules)" in empty.stdout
    worker = cli.start("worker", "cliapp:worker")
    stop_all.append(worker)

    def listed() -> bool:
        done = cli.run("schedules")
        return done.returncode == 0 and "tick" in done.stdout and "every 3600s" in done.stdout

    wait_until(listed, 30, "the worker to declare its schedule")
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0
    assert "schedule tick declared" in output


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_second_signal_cancels_running_jobs_back_to_the_queue(
    tmp_path: Path, stop_all: Procs, second: signal.Signals
) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'cancel.db'}")
    job_id = cli.enqueue("slow", {"seconds": 60})
    worker = cli.start("worker", "cliapp:worker", "--drain-timeout", "60")
    stop_all.append(worker)
    wait_until(lambda: (cli.out / f"started-{job_id}").exists(), 30, "the slow job to start")
    lines: list[str] = []
    assert worker.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout or ()), daemon=True)
    reader.start()
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM if second == signal.SIGINT else signal.SIGINT)
    wait_until(lambda: any("draining" in line for line in lines), 30, "the drain to begin")
    drain = next(line for line in lines if "draining" in line)
    assert "a second SIGTERM or SIGINT cancels them" in drain
    worker.send_signal(second)
    assert worker.wait(30) == 0, "".join(lines)
    reader.join(10)
    worker.stdout.close()
    assert time.monotonic() - began < 20
    assert not (cli.out / job_id).exists()
    record = cli.status(job_id)
    assert record["state"] == "queued" and record["attempts"] == 0


def test_dead_letters_list_retry_and_purge(tmp_path: Path, stop_all: Procs) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'deadcli.db'}")
    ids = [cli.enqueue("reject", {"n": n}) for n in range(3)]
    worker = cli.start("worker", "cliapp:worker")
    stop_all.append(worker)
    wait_until(lambda: all(cli.status(i)["state"] == "dead" for i in ids), 30, "dead letters")
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=30)
    listed = [json.loads(line) for line in cli.run("dead", "list", "--json").stdout.splitlines()]
    assert sorted(r["id"] for r in listed) == sorted(ids)
    assert {r["status"] for r in listed} == {400} and "no such user" in listed[0]["error"]
    one = cli.run("dead", "retry", ids[0])
    assert one.returncode == 0 and cli.status(ids[0])["state"] == "queued"
    rest = cli.run("dead", "retry", "--all")
    assert rest.returncode == 0 and "retried 2 dead jobs" in rest.stdout
    assert all(cli.status(i)["attempts"] == 0 for i in ids)
    assert cli.run("dead", "purge").stdout.strip() == "purged 0 dead jobs"


def test_processes_http_sums_metrics_over_children(tmp_path: Path, stop_all: Procs) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'group.db'}")
    ids = [cli.enqueue("echo", {"n": n}) for n in range(6)]
    port = free_port()
    supervisor = cli.start(
        "worker", "cliapp:worker", "--processes", "2", "--http", f"127.0.0.1:{port}"
    )
    stop_all.append(supervisor)
    wait_until(lambda: all((cli.out / i).exists() for i in ids), 30, "every job to run")

    def counted() -> bool:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return False
        total = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("pywork_requests_total{") and 'handler="echo"' in line
        )
        return total == 6

    wait_until(counted, 30, "/metrics to count the 6 jobs of both processes")
    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
    assert ready.status_code == 200
    index = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).json()  # ops.create_app's
    assert [p["number"] for p in index["processes"]] == [1, 2] and index["ready"] is True
    supervisor.send_signal(signal.SIGTERM)
    supervisor.communicate(timeout=30)
    assert supervisor.returncode == 0


def test_queues_watch_refreshes_until_interrupted(tmp_path: Path, stop_all: Procs) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'watch.db'}")
    cli.enqueue("echo", {"n": 1})
    watch = cli.start("queues", "--watch", "--interval", "0.1")
    stop_all.append(watch)
    lines: list[str] = []
    assert watch.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(watch.stdout or ()), daemon=True)
    reader.start()
    wait_until(lambda: any("default" in line for line in lines), 30, "the table")
    watch.send_signal(signal.SIGINT)
    assert watch.wait(30) == 0
    reader.join(10)
    watch.stdout.close()


def test_relative_sqlite_url_is_shown_absolute(tmp_path: Path, stop_all: Procs) -> None:
    # Given the default-style relative url, used from the directory of the app
    cli = Cli(tmp_path, "sqlite:///rel.db")
    absolute = str(tmp_path / "rel.db")
    job_id = cli.enqueue("echo", {"n": 1})

    # Then status and the worker's banner name the absolute path
    shown = cli.run("status", job_id)
    assert shown.returncode == 0 and f"sqlite:///{absolute}" in shown.stdout, shown.stdout
    worker = cli.start("worker", "cliapp:worker")
    stop_all.append(worker)
    wait_until(lambda: (cli.out / job_id).exists(), 30, "the job to run")
    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert f"broker=sqlite:///{absolute}" in output.splitlines()[0]


@pytest.mark.parametrize(
    "command", [["queues"], ["status", "0" * 32], ["dead", "list"], ["schedules"]]
)
def test_read_only_commands_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    cli = Cli(tmp_path, "sqlite:///missing.db")
    done = cli.run(*command)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.strip() == f"error: no pywork database at {tmp_path / 'missing.db'}"
    assert not (tmp_path / "missing.db").exists()


def test_version(tmp_path: Path) -> None:
    from pywork import __version__

    done = Cli(tmp_path, "memory://").run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"pywork {__version__}"


def test_cancel_a_queued_job(tmp_path: Path) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'cancel.db'}")
    job_id = cli.enqueue("echo", {"n": 1})
    done = cli.run("cancel", job_id)
    assert done.returncode == 0 and done.stdout.strip() == f"cancelled {job_id}"
    assert cli.status(job_id)["state"] == "cancelled"
    again = cli.run("cancel", job_id)
    assert again.returncode == 1 and "is cancelled: nothing to cancel" in again.stderr
    unknown = cli.run("cancel", "f" * 32)
    assert unknown.returncode == 1 and "no job" in unknown.stderr


def test_unschedule_and_json_listings(tmp_path: Path) -> None:
    import asyncio

    import pywork
    from pywork import Job

    url = f"sqlite:///{tmp_path / 'json.db'}"
    cli = Cli(tmp_path, url)

    async def declare() -> None:
        async with pywork.connect(url) as broker:
            await broker.schedule("nightly", Job("echo", {"n": 1}), every=86400)

    asyncio.run(declare())
    job_id = cli.enqueue("echo", {"n": 2})
    queues = json.loads(cli.run("queues", "--json").stdout)
    assert queues["default"]["queued"] == 1
    assert json.loads(cli.run("status", job_id, "--json").stdout)["id"] == job_id
    assert cli.run("dead", "list", "--json").stdout == ""
    [listed] = json.loads(cli.run("schedules", "--json").stdout)
    assert listed["name"] == "nightly" and listed["every"] == 86400.0

    done = cli.run("unschedule", "nightly")
    assert done.returncode == 0 and "unscheduled nightly" in done.stdout
    assert json.loads(cli.run("schedules", "--json").stdout) == []
    missing = cli.run("unschedule", "nightly")
    assert missing.returncode == 1 and "no schedule 'nightly'" in missing.stderr


def test_tables_are_not_cut_when_piped(tmp_path: Path) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'wide.db'}")
    queue = "a-very-long-queue-name-" + "x" * 100
    done = cli.run("enqueue", "echo", "--queue", queue)
    assert done.returncode == 0, done.stderr
    table = cli.run("queues")
    assert any(queue in line for line in table.stdout.splitlines()), table.stdout


def test_enqueue_with_a_live_key_says_so(tmp_path: Path) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'key.db'}")
    first = cli.run("enqueue", "echo", "--key", "user-7")
    second = cli.run("enqueue", "echo", "--key", "user-7")
    assert first.returncode == second.returncode == 0
    assert first.stderr == ""
    assert second.stdout == first.stdout
    assert f"the live job {first.stdout.strip()} holds key 'user-7'" in second.stderr


def test_enqueue_timeout_and_max_retries_then_purge_asks(tmp_path: Path, stop_all: Procs) -> None:
    import pty

    # Given a job that times out, enqueued with no retries
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'opts.db'}")
    done = cli.run(
        "enqueue", "slow", "--args", '{"seconds": 30}', "--timeout", "0.2", "--max-retries", "0"
    )
    job_id = done.stdout.strip()
    worker = cli.start("worker", "cliapp:worker")
    stop_all.append(worker)

    # Then one run times out and the job is dead at once
    wait_until(lambda: cli.status(job_id)["state"] == "dead", 30, "the job to be dead")
    record = cli.status(job_id)
    assert record["status"] == 408 and record["attempts"] == 1
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=30)

    # When `dead purge` runs on a terminal, it asks; "n" purges nothing
    def purge_on_a_terminal(answer: bytes, *args: str) -> subprocess.CompletedProcess[str]:
        leader, follower = pty.openpty()
        try:
            os.write(leader, answer)
            return subprocess.run(
                [sys.executable, "-m", "pywork", "dead", "purge", *args],
                cwd=cli.cwd,
                env=cli.env,
                stdin=follower,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.close(leader)
            os.close(follower)

    declined = purge_on_a_terminal(b"n\n")
    assert declined.returncode == 1 and "purge 1 dead jobs" in declined.stderr
    assert cli.status(job_id)["state"] == "dead"
    accepted = purge_on_a_terminal(b"y\n")
    assert accepted.returncode == 0 and "purged 1 dead jobs" in accepted.stdout


def test_import_error_inside_the_app_module(tmp_path: Path) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'imp.db'}")
    (tmp_path / "tasks.py").write_text("import os\nvalue = 1 / 0\n")
    done = cli.run("worker", "tasks:worker")
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: while importing APP 'tasks:worker': ZeroDivisionError")
    assert "tasks.py, line 2" in line


def test_redis_database_out_of_range(tmp_path: Path, redis_server: RedisServer) -> None:
    cli = Cli(tmp_path, f"sqlite:///{tmp_path / 'r.db'}")
    done = cli.run("queues", "--broker", f"redis://127.0.0.1:{redis_server.port}/99")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert f"Redis at 127.0.0.1:{redis_server.port} refused database 99" in line
    assert "0-15" in line


def test_http_takes_an_ipv6_address_in_brackets() -> None:
    from pywork.cli import _host_port

    assert _host_port("[::1]:9000") == ("::1", 9000)
    assert _host_port("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert _host_port(":9000") == ("127.0.0.1", 9000)
