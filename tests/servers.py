"""Private database and Redis servers for the tests, on free loopback ports."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.01, what: str = ""
):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def kill_at_once(process: subprocess.Popen | None) -> None:
    """SIGKILL a server process, if it still runs, and reap it."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()


class RedisServer:
    """A redis-server of our own: started, killed and restarted by the tests."""

    def __init__(self, *extra_args: str, appendonly: bool = False, port: int = 0) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="threadmill-redis-"))
        self.args = [
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if appendonly else "no",
            "--appendfsync", "always", "--protected-mode", "no", *extra_args,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self._answers, timeout=10, what="redis-server to accept connections")
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a power cut would."""
        kill_at_once(self.process)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def environment(**variables: str) -> dict[str, str]:
    """The environment of a child process: ours, plus `variables`."""
    return {**os.environ, **variables}


class PostgresServer:
    """A throw-away PostgreSQL cluster of our own (Debian's binaries), on a free loopback port.

    initdb refuses to run as root, so as root the cluster belongs to, and runs as, the
    `postgres` user. Durability settings are off: the tests never need the data after a crash.
    """

    DATABASE = "threadmill"
    USER = "postgres"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="threadmill-postgres-"))
        self.data = self.dir / "data"
        self.process: subprocess.Popen | None = None
        self.bin = self._bin_dir()
        if os.geteuid() == 0:
            import pwd

            owner = pwd.getpwnam("postgres")
            self.user: dict = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        else:
            self.user = {}

    @staticmethod
    def _bin_dir() -> Path:
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3])
        )
        if found:
            return found[-1].parent
        initdb = shutil.which("initdb")
        if initdb is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        return Path(initdb).parent

    @property
    def settings(self) -> dict[str, str]:
        """The connection fields of a DATABASES entry for this server."""
        return {
            "NAME": self.DATABASE,
            "USER": self.USER,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }

    def start(self) -> "PostgresServer":
        if not self.data.exists():
            subprocess.run(
                [self.bin / "initdb", "-D", self.data, "-U", self.USER, "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **self.user,
            )  # fmt: skip
            created = True
        else:
            created = False
        self.process = subprocess.Popen(
            [self.bin / "postgres", "-D", self.data, "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=300", "-c", "log_min_messages=fatal"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **self.user,
        )  # fmt: skip
        wait_for(self._answers, timeout=30, what="postgres to accept connections")
        if created:
            self.execute(f"CREATE DATABASE {self.DATABASE}", database="postgres")
        return self

    def execute(self, sql: str, database: str | None = None) -> None:
        import psycopg

        with psycopg.connect(
            dbname=database or self.DATABASE, user=self.USER, host="127.0.0.1",
            port=self.port, autocommit=True,
        ) as connection:  # fmt: skip
            connection.execute(sql)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.process.returncode}")
        import psycopg

        try:
            psycopg.connect(
                dbname="postgres", user=self.USER, host="127.0.0.1", port=self.port,
                connect_timeout=1,
            ).close()  # fmt: skip
        except psycopg.OperationalError:
            return False
        return True

    def kill(self) -> None:
        """Kill the postmaster at once (SIGKILL), as a power cut would."""
        kill_at_once(self.process)

    def restart(self) -> None:
        self.kill()
        # Its backends notice the postmaster's death and exit; then the port is free again.
        wait_for(lambda: not self._port_taken(), timeout=30, what="the old postgres to exit")
        self.start()

    def _port_taken(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
