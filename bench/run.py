"""Benchmark threadmill against the task queues people would pick instead, in one run.

    uv run python bench/run.py                  # the full run: every peer, every figure
    uv run python bench/run.py --quick          # small N, one run: a minute or two
    uv run python bench/run.py --only threadmill --tasks 200 --runs 1

Each peer is installed from PyPI into its own virtualenv under bench/.envs/<peer> (never into
the project's); threadmill runs from this checkout, with the interpreter that runs this script.
Every measurement starts a fresh private redis-server on a free loopback port, persistence off.
Every peer runs the same task body (bench/bench_common.py): one Redis INCR, or ~5 ms of CPU.

Figures (issue 5): no-op throughput of one worker process (N tasks pre-enqueued, time from the
first task's end to the last's), worker CPU per task (the pool's processes, from /proc), idle
pickup latency (one task at a time into an idle pool, enqueue -> start recorded by the task),
idle load (Redis commands per second sent by an idle pool), overhead on 5 ms CPU-bound tasks
with two processes ((wall x processes - summed task CPU) / tasks) and the enqueue rate of one
thread. Medians over --runs, with min-max. Writes docs/benchmark.md and docs/benchmark.png
(raw results in bench/results/).
"""

# ruff: noqa: RUF001 - the table and the chart print typographic signs on purpose

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ENVS = BENCH / ".envs"
RESULTS = BENCH / "results"

sys.path.insert(0, str(BENCH))
import bench_common  # noqa: E402

# --- peers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One way of running the tasks: a queue, its worker command and how it is configured."""

    name: str  # row label
    family: str  # the queue it is (one virtualenv per family)
    module: str  # bench/peers module with enqueue()
    config: str  # how its worker runs, for the table
    settings: str = ""  # DJANGO_SETTINGS_MODULE, for Django peers
    sqlite: bool = False  # needs a fresh, migrated SQLite database
    postgres: bool = False  # needs a fresh, migrated PostgreSQL server (--database postgres)
    processes: int = 1
    threads: int = 1
    figures: tuple[str, ...] = ("throughput", "latency", "idle", "overhead")

    def python(self) -> str:
        if self.family == "threadmill":
            return sys.executable
        return str(ENVS / self.family / "bin" / "python")

    def worker(self, processes: int, threads: int) -> list[str]:
        """The worker command: `processes` worker processes of `threads` threads each."""
        py = self.python()
        if self.family == "threadmill":
            return [
                py, "-m", "django", "threadmill", "--settings", self.settings,
                "--processes", str(processes), "--threads", str(threads),
            ]  # fmt: skip
        if self.family == "dramatiq":
            return [py, "-m", "dramatiq", self.module, "-p", str(processes), "-t", str(threads)]
        if self.family == "huey":
            kind = "process" if processes > 1 else "thread"
            return [
                py, str(ENVS / "huey" / "bin" / "huey_consumer"), f"{self.module}.huey",
                "-w", str(max(processes, threads)), "-k", kind, "-q",
            ]  # fmt: skip
        if self.family == "celery":
            return [
                py, "-m", "celery", "-A", self.module, "worker", "-P", "prefork",
                "-c", str(processes), "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "WARNING",
            ]  # fmt: skip
        if self.family == "rq":
            one = [py, str(BENCH / "agent.py"), self.module, "work"]
            return _several(one, processes)
        if self.family == "django-tasks-db":
            one = [
                py, "-m", "django", "db_worker", "--settings", self.settings,
                "--no-startup-delay", "-v", "0",
            ]  # fmt: skip
            return _several(one, processes)
        raise ValueError(self.family)


def _several(command: list[str], processes: int) -> list[str]:
    """A command run `processes` times side by side, in one process group."""
    if processes == 1:
        return command
    one = shlex.join(command)
    return ["sh", "-c", " & ".join([one] * processes) + " & wait"]


# The packages of each peer's virtualenv; every Redis client gets hiredis, as threadmill has.
FAMILIES: dict[str, list[str]] = {
    "dramatiq": ["dramatiq[redis]", "redis[hiredis]"],
    "huey": ["huey", "redis[hiredis]"],
    "celery": ["celery[redis]", "redis[hiredis]"],
    "rq": ["rq", "redis[hiredis]"],
    "django-tasks-db": ["django-tasks-db", "django>=6.1", "redis[hiredis]", "psycopg[binary]"],
}
TOOLS: dict[str, list[str]] = {"plot": ["matplotlib"], "profile": ["py-spy"]}
DISTRIBUTIONS = {
    "threadmill": ["threadmill", "django", "redis", "hiredis", "psycopg"],
    "dramatiq": ["dramatiq", "redis", "hiredis"],
    "huey": ["huey", "redis", "hiredis"],
    "celery": ["celery", "kombu", "redis", "hiredis"],
    "rq": ["rq", "redis", "hiredis"],
    "django-tasks-db": ["django-tasks-db", "django", "psycopg"],
}

TM = "threadmill"
PEERS = [
    Peer(TM, TM, "peers.django_tasks", "1 process, 1 thread",
         settings="peers.settings_threadmill"),
    Peer(f"{TM} ×2 processes", TM, "peers.django_tasks", "2 processes, 1 thread each",
         settings="peers.settings_threadmill", processes=2, figures=("throughput",)),
    Peer(f"{TM} ×4 threads", TM, "peers.django_tasks", "1 process, 4 threads",
         settings="peers.settings_threadmill", threads=4, figures=("throughput",)),
    Peer("Dramatiq", "dramatiq", "peers.dramatiq_peer", "1 process, 8 threads (default)",
         threads=8),
    Peer("Huey", "huey", "peers.huey_peer", "1 worker thread (default)"),
    Peer("Celery", "celery", "peers.celery_peer", "prefork, concurrency 1, prefetch ×64"),
    Peer("RQ", "rq", "peers.rq_peer", "1 worker (forks a work horse per task)"),
    Peer("django-tasks-db", "django-tasks-db", "peers.django_tasks",
         "db_worker on SQLite (WAL), --interval 1 (default)",
         settings="peers.settings_dtdb", sqlite=True),
    Peer(f"{TM} database", TM, "peers.django_tasks", "1 process, 1 thread, SQLite (WAL)",
         settings="peers.settings_threadmill_db", sqlite=True, figures=("throughput",)),
    # Issue 6 point 3, PostgreSQL leg: only with --database postgres (or named in --peers).
    Peer("django-tasks-db (PostgreSQL)", "django-tasks-db", "peers.django_tasks",
         "db_worker on PostgreSQL, --interval 1 (default)",
         settings="peers.settings_dtdb_postgres", postgres=True, figures=("throughput",)),
    Peer(f"{TM} database (PostgreSQL)", TM, "peers.django_tasks", "1 process, 1 thread, PostgreSQL",
         settings="peers.settings_threadmill_db_postgres", postgres=True,
         figures=("throughput",)),
]  # fmt: skip


def threadmill_database_exists() -> bool:
    package = ROOT / "threadmill" / "backends"
    return (package / "database.py").exists() or (package / "database" / "__init__.py").exists()


# --- environments -------------------------------------------------------------------------


def ensure_env(name: str, packages: list[str], upgrade: bool = False) -> Path:
    """Create bench/.envs/<name> with `packages` from PyPI, once (again with --upgrade)."""
    env = ENVS / name
    marker = env / ".bench-installed"
    wanted = "\n".join(packages)
    if not upgrade and marker.exists() and marker.read_text() == wanted:
        return env
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is needed to build the peers' virtualenvs (pip install uv)")
    python = os.environ.get("UV_PYTHON") or sys.executable
    log(f"installing {name}: {' '.join(packages)}")
    if not (env / "bin" / "python").exists():
        subprocess.run([uv, "venv", "-q", "--python", python, str(env)], check=True)
    # --python pins the target: UV_PYTHON alone would make `uv pip` install into the base Python.
    command = [uv, "pip", "install", "-q", "--python", str(env / "bin" / "python"), *packages]
    if upgrade:
        command.insert(3, "--upgrade")
    subprocess.run(command, check=True)
    marker.write_text(wanted)
    return env


def versions(family: str, python: str) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))"
    )
    names = DISTRIBUTIONS.get(family, [])
    reply = subprocess.run([python, "-c", code, *names], capture_output=True, text=True)
    return json.loads(reply.stdout or "{}")


# --- servers and processes ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Redis:
    """A private redis-server: loopback, free port, no persistence; gone after the block."""

    def __enter__(self) -> "Redis":
        import redis

        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="threadmill-bench-")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", self.dir, "--save", "", "--appendonly", "no",
                "--protected-mode", "no",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """A throw-away PostgreSQL cluster (tests.servers.PostgresServer) with its durable defaults.

    PostgresServer turns fsync, synchronous_commit and full_page_writes off (the tests never need
    their data after a crash); a benchmark of a database queue runs the server as it is run in
    production, so those three `-c` flags are dropped from its command line here. Gone after the
    block; the settings it really ran with are checked and kept in `Postgres.seen`.
    """

    NOT_DURABLE = {"fsync=off", "synchronous_commit=off", "full_page_writes=off"}
    SHOWN = ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level")
    seen: dict[str, str] = {}

    def __enter__(self) -> "Postgres":
        import types
        from unittest import mock

        sys.path.insert(0, str(ROOT))
        from tests import servers

        def popen(command, *args, **kwargs):
            kept: list = []
            for part in command:
                if str(part) in self.NOT_DURABLE and kept and kept[-1] == "-c":
                    kept.pop()
                else:
                    kept.append(part)
            return subprocess.Popen(kept, *args, **kwargs)

        durable = types.SimpleNamespace(**{**vars(subprocess), "Popen": popen})
        self.server = servers.PostgresServer()
        try:
            with mock.patch.object(servers, "subprocess", durable):
                self.server.start()
            Postgres.seen = self.show()
        except BaseException:
            self.server.stop()
            raise
        if Postgres.seen["fsync"] != "on" or Postgres.seen["synchronous_commit"] != "on":
            self.server.stop()
            raise RuntimeError(f"PostgreSQL is not running durably: {Postgres.seen}")
        return self

    def show(self) -> dict[str, str]:
        import psycopg

        fields = self.server.settings
        with psycopg.connect(
            dbname=fields["NAME"], user=fields["USER"], host=fields["HOST"], port=fields["PORT"]
        ) as connection:
            return {name: connection.execute(f"SHOW {name}").fetchone()[0] for name in self.SHOWN}

    def __exit__(self, *exc) -> None:
        self.server.stop()


@contextlib.contextmanager
def database(peer: Peer, tmp: str):
    """The environment a peer's settings find its fresh database in: SQLite, PostgreSQL or none."""
    if peer.postgres:
        with Postgres() as server:
            yield {"BENCH_POSTGRES": json.dumps(server.server.settings)}
    elif peer.sqlite:
        yield {"BENCH_SQLITE": str(Path(tmp) / "bench.sqlite3")}
    else:
        yield {}


# Where threadmill is imported from: the working tree, or a snapshot of a commit
# (--threadmill-rev), so that edits made while the benchmark runs do not reach it.
SNAPSHOT: Path | None = None


def snapshot(rev: str, name: str = "threadmill-src") -> tuple[Path, str]:
    """Extract the `threadmill` package of commit `rev` into bench/.envs/<name>."""
    target = ENVS / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "threadmill"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target, commit


def environment(redis_url: str, sqlite: str = "") -> dict[str, str]:
    env = {
        **os.environ,
        "BENCH_REDIS_URL": redis_url,
        # A snapshot comes first: it hides the working tree's editable install.
        "PYTHONPATH": os.pathsep.join(str(p) for p in (SNAPSHOT, BENCH) if p),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("VIRTUAL_ENV", None)
    if sqlite:
        env["BENCH_SQLITE"] = sqlite
    return env


def agent(peer: Peer, env: dict[str, str], *args: object, timeout: float = 3600) -> dict:
    """Run bench/agent.py in the peer's Python; return the JSON it printed."""
    if peer.settings:
        env = {**env, "DJANGO_SETTINGS_MODULE": peer.settings}
    reply = subprocess.run(
        [peer.python(), str(BENCH / "agent.py"), peer.module, *map(str, args)],
        env=env, cwd=BENCH, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if reply.returncode != 0:
        raise RuntimeError(f"{peer.name} agent {args} failed:\n{reply.stderr[-3000:]}")
    return json.loads(reply.stdout.strip().splitlines()[-1])


def migrate(peer: Peer, env: dict[str, str]) -> None:
    subprocess.run(
        [peer.python(), "-m", "django", "migrate", "-v", "0", "--settings", peer.settings],
        env=env, cwd=BENCH, check=True,
    )  # fmt: skip


class Worker:
    """A peer's worker processes in a session of their own, so they are measured and stopped
    together (Celery's and Dramatiq's children, RQ's work horses included)."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(
            command, env=env, cwd=BENCH, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.sid = self.process.pid

    def cpu(self) -> float:
        """CPU seconds (user + system) of every process of the session, reaped children too."""
        # fields[0] is the state (field 3 of proc(5)); session is field 6, times 14-17.
        ticks = sum(
            sum(int(value) for value in fields[11:15])
            for _, fields in processes()
            if int(fields[3]) == self.sid
        )
        return ticks / os.sysconf("SC_CLK_TCK")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.sid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(wait)
                # The leader is gone; give its children a moment, then make sure.
                time.sleep(0.2)
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.sid, signal.SIGKILL)
        self.log.close()


def machine_cpu_pressure() -> float | None:
    """Seconds so far during which some thread of the machine was runnable but waited for a CPU
    (/proc/pressure/cpu, "some"); None where the kernel does not tell."""
    try:
        with open("/proc/pressure/cpu") as pressure:
            some = pressure.readline().split()
        return int(some[-1].removeprefix("total=")) / 1e6
    except (OSError, IndexError, ValueError):
        return None


def proc_stat(pid: int | str) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the process name (fields[0] is its state), or
    None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def processes() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, `proc_stat` fields) of every process of the machine."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := proc_stat(entry)) is not None:
            yield int(entry), fields


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of one process so far."""
    fields = proc_stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sample(NamedTuple):
    """What the driver reads while a drain runs."""

    at: float  # time.monotonic()
    done: int  # tasks finished
    pool_cpu: float  # seconds
    redis_cpu: float  # seconds
    idle_ticks: tuple[int, int]  # bench_common.machine_idle()
    cpu_pressure: float | None  # machine_cpu_pressure()


def wait_done(r, count: int, timeout: float, worker: Worker) -> None:
    deadline = time.monotonic() + timeout
    while int(r.get(bench_common.DONE) or 0) < count:
        if not worker.alive():
            raise RuntimeError("the worker exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} task(s) not done within {timeout} s")
        time.sleep(0.01)


# --- the figures --------------------------------------------------------------------------


@dataclass
class Context:
    tasks: int
    burn_tasks: int
    latency_tasks: int
    idle_seconds: float
    drain_timeout: float
    logs: Path


@contextlib.contextmanager
def stage(peer: Peer):
    """A fresh Redis, and a fresh migrated database if the peer needs one; yields the server,
    the environment of the driver's agents and that of the worker."""
    with (
        Redis() as server,
        tempfile.TemporaryDirectory(prefix="threadmill-bench-db-") as tmp,
        database(peer, tmp) as db,
    ):
        env = {**environment(server.url), **db}
        if db:
            migrate(peer, env)
        worker_env = {**env, "DJANGO_SETTINGS_MODULE": peer.settings} if peer.settings else env
        yield server, env, worker_env


def drain(peer: Peer, ctx: Context, kind: str, count: int, processes: int, threads: int) -> dict:
    """Pre-enqueue `count` tasks, start the pool, time the drain; sample the pool's CPU."""
    with stage(peer) as (server, env, worker_env):
        enqueued = agent(peer, env, "enqueue", kind, count, count)
        worker = Worker(peer.worker(processes, threads), worker_env, ctx.logs / f"{slug(peer)}.log")
        r = server.client
        first = last = None

        def sample(now: float, done: int) -> Sample:
            return Sample(now, done, worker.cpu(), cpu_seconds(server.process.pid),
                          bench_common.machine_idle(), machine_cpu_pressure())  # fmt: skip

        try:
            deadline = time.monotonic() + ctx.drain_timeout + 60
            while True:
                now = time.monotonic()
                done = int(r.get(bench_common.DONE) or 0)
                if first is None and done >= 1:
                    first = sample(now, done)
                if done >= count or (first and now > first.at + ctx.drain_timeout):
                    last = sample(now, done)
                    break
                if now > deadline or not worker.alive():
                    raise RuntimeError(f"{peer.name}: {done}/{count} tasks done, worker stuck")
                time.sleep(0.005)
            # The last task sets LAST just after its INCR: give it a moment.
            settle = time.monotonic() + 5
            while last.done >= count and r.get(bench_common.LAST) is None:
                if time.monotonic() > settle:
                    break
                time.sleep(0.005)
            t_first = float(r.get(bench_common.FIRST))
            t_last = r.get(bench_common.LAST)
            cpu_ns = int(r.get(bench_common.CPU_NS) or 0)
        finally:
            worker.stop()
    complete = last.done >= count and t_last is not None
    ran = max(1, last.done - first.done)
    idle, ticks = (b - a for a, b in zip(first.idle_ticks, last.idle_ticks, strict=True))
    result = {
        "enqueue_rate": enqueued["rate"],
        "complete": complete,
        "done": last.done,
        "cpu_per_task": (last.pool_cpu - first.pool_cpu) / ran,
        # Where the time went between the first and the last task, for the scaling target:
        # Redis's CPU, how much of the machine stayed idle, and for how much of the time some
        # runnable thread (the pool's, Redis's, the driver's) waited for a CPU all the same.
        "redis_cpu_per_task": (last.redis_cpu - first.redis_cpu) / ran,
        "machine_idle": idle / max(1, ticks),
    }
    if first.cpu_pressure is not None and last.cpu_pressure is not None:
        waited = last.cpu_pressure - first.cpu_pressure
        result["cpu_pressure"] = waited / max(1e-9, last.at - first.at)
    if complete:
        wall = float(t_last) - t_first
        result["wall"] = wall
        result["throughput"] = (count - 1) / wall if kind == "noop" else count / wall
    else:  # the drain timed out: the rate the driver saw
        result["wall"] = last.at - first.at
        result["throughput"] = (last.done - first.done) / (last.at - first.at)
    if kind == "burn" and complete:
        result["task_cpu"] = cpu_ns / 1e9
        result["overhead_us"] = (wall * processes - cpu_ns / 1e9) / count * 1e6
    return result


def idle_pool(peer: Peer, ctx: Context, latency: bool, idle: bool) -> dict:
    """Start a pool, let it go idle; count its Redis commands, then time idle pickups."""
    result: dict = {}
    with stage(peer) as (server, env, worker_env):
        worker = Worker(
            peer.worker(peer.processes, peer.threads), worker_env, ctx.logs / f"{slug(peer)}.log"
        )
        try:
            agent(peer, env, "enqueue", "noop", 1, 1)  # a first task: the pool is up and warm
            wait_done(server.client, 1, 120, worker)
            if idle:
                time.sleep(2.0)
                result.update(count_commands(server, ctx.idle_seconds))
                result["idle_commands_per_s"] = result["client_commands"] / ctx.idle_seconds
                result["idle_all_commands_per_s"] = result["all_commands"] / ctx.idle_seconds
            if latency:
                found = agent(peer, env, "latency", latency_count(peer, ctx))["latencies"]
                result["latencies"] = found
                result.update(percentiles(found))
        finally:
            worker.stop()
    return result


def latency_count(peer: Peer, ctx: Context) -> int:
    # db_worker polls once a second: each sample costs ~0.6 s, so it gets fewer.
    if peer.family == "django-tasks-db":
        return max(10, ctx.latency_tasks // 5)
    return ctx.latency_tasks


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def count_commands(server: Redis, seconds: float) -> dict:
    """Commands the pool sends to Redis over `seconds`: MONITOR for what clients sent (a Lua
    script counts once), INFO commandstats for everything Redis ran (scripts' calls too)."""
    sent: Counter = Counter()
    stop = threading.Event()
    ready = threading.Event()
    ours: set[str] = set()

    def monitor() -> None:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            ours.add(f"127.0.0.1:{sock.getsockname()[1]}")
            sock.sendall(b"MONITOR\r\n")
            sock.settimeout(0.2)
            buffer = b""
            while not stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                buffer += data
                *lines, buffer = buffer.split(b"\r\n")
                for line in lines:
                    if line == b"+OK":
                        ready.set()
                        continue
                    try:
                        origin = line.split(b"[", 1)[1].split(b"]", 1)[0].decode()
                        command = line.split(b'"', 2)[1].decode().lower()
                    except IndexError:
                        continue
                    address = origin.split(" ", 1)[-1]
                    if "lua" in origin or address in ours:
                        continue
                    sent[command] += 1

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    ready.wait(5)
    with socket.create_connection(("127.0.0.1", server.port)) as info:
        ours.add(f"127.0.0.1:{info.getsockname()[1]}")
        before = commandstats(info)
        stop.wait(seconds)
        after = commandstats(info)
    stop.set()
    thread.join(2)
    ran = {name: calls - before.get(name, 0) for name, calls in after.items()}
    for ignored in ("info", "monitor"):
        ran.pop(ignored, None)
    return {
        "client_commands": sum(sent.values()),
        "client_breakdown": dict(sent.most_common()),
        "all_commands": sum(ran.values()),
        "all_breakdown": {k: v for k, v in sorted(ran.items(), key=lambda kv: -kv[1]) if v},
    }


def commandstats(sock: socket.socket) -> dict[str, int]:
    """Calls per command from INFO commandstats, over a raw connection of known address."""
    sock.sendall(b"INFO commandstats\r\n")
    data = b""
    while True:
        data += sock.recv(65536)
        header, _, body = data.partition(b"\r\n")
        if header.startswith(b"$") and len(body) >= int(header[1:]):
            break
    calls = {}
    for line in body.decode().splitlines():
        if line.startswith("cmdstat_"):
            name, stats = line.removeprefix("cmdstat_").split(":", 1)
            calls[name] = int(stats.split(",")[0].removeprefix("calls="))
    return calls


def calibrate(quick: bool, repeats: int = 3000) -> dict:
    """The task body's own reporting cost (one pipelined INCR + INCRBY round trip, alone), and
    the floors no worker can go below on this machine (bench/floors.py)."""
    with Redis() as server:
        r = server.client
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(repeats):
            pipe = r.pipeline(transaction=False)
            pipe.incr("x")
            pipe.incrby("y", 5)
            pipe.execute()
        measured = {
            "report_wall_us": (time.perf_counter() - wall) / repeats * 1e6,
            "report_cpu_us": (time.thread_time() - cpu) / repeats * 1e6,
        }
        env = {**environment(server.url), "DJANGO_SETTINGS_MODULE": "peers.settings_threadmill"}
        reply = subprocess.run(
            [sys.executable, str(BENCH / "floors.py"), *(["--quick"] if quick else [])],
            env=env, cwd=BENCH, capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        measured["floors"] = json.loads(reply.stdout.strip().splitlines()[-1])
        return measured


def best_calibration(measured: list[dict]) -> dict:
    """The best each floor was seen at: the highest rates, the least CPU and time."""
    import floors  # bench/floors.py

    best: dict = {"measurements": len(measured)}
    for key in dict.fromkeys(key for one in measured for key in one):
        values = [one[key] for one in measured if key in one]
        if key == "floors":
            best[key] = best_calibration(values)
            del best[key]["measurements"]
        elif isinstance(values[0], dict) and "ratio" in values[0]:
            best[key] = floors.best_scaling(values)
        elif isinstance(values[0], dict):
            best[key] = floors.best_figures(values)
        else:
            best[key] = min(values)  # the reporting round trip's µs
    return best


# --- running it all -----------------------------------------------------------------------


def slug(peer: Peer) -> str:
    return "".join(c if c.isalnum() else "-" for c in peer.name.lower())


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def run_peer(peer: Peer, ctx: Context, runs: int, figures: set[str]) -> list[dict]:
    out = []
    wanted = figures & set(peer.figures)
    for i in range(runs):
        record: dict = {}
        if "throughput" in wanted:
            record["noop"] = drain(peer, ctx, "noop", ctx.tasks, peer.processes, peer.threads)
            log(
                f"  {peer.name} run {i + 1}: {record['noop']['throughput']:,.0f} tasks/s, "
                f"{record['noop']['cpu_per_task'] * 1e6:,.0f} µs CPU/task, "
                f"enqueue {record['noop']['enqueue_rate']:,.0f}/s"
            )
        if wanted & {"latency", "idle"}:
            record["idle"] = idle_pool(peer, ctx, "latency" in wanted, "idle" in wanted)
            idle = record["idle"]
            log(
                f"  {peer.name} run {i + 1}: "
                + (
                    f"pickup p50 {idle['p50'] * 1e3:.2f} ms p95 {idle['p95'] * 1e3:.2f} ms "
                    f"p99 {idle['p99'] * 1e3:.2f} ms; "
                    if "p50" in idle
                    else ""
                )
                + (
                    f"idle {idle['idle_commands_per_s']:.2f} commands/s {idle['client_breakdown']}"
                    if "idle_commands_per_s" in idle
                    else ""
                )
            )
        if "overhead" in wanted:
            # Two worker processes, one thread each: CPU-bound work wants processes.
            record["burn"] = drain(peer, ctx, "burn", ctx.burn_tasks, 2, 1)
            log(
                f"  {peer.name} run {i + 1}: overhead "
                f"{record['burn'].get('overhead_us', float('nan')):,.0f} µs/task (2 processes)"
            )
        out.append(record)
    return out


def machine() -> dict:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        memory_kb = int(meminfo.readline().split()[1])
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(memory_kb / 2**20),
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": redis_version.split(" v=")[1].split()[0]
        if " v=" in redis_version
        else redis_version,
        "load_before": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, help="no-op tasks per drain (default: 20,000)")
    parser.add_argument("--burn-tasks", type=int, help="5 ms CPU tasks per drain (default: 1,000)")
    parser.add_argument("--latency-tasks", type=int, help="idle pickups per run (default: 200)")
    parser.add_argument("--idle-seconds", type=float, help="idle load window (default: 10)")
    parser.add_argument("--runs", type=int, help="runs per figure, median shown (default: 3)")
    parser.add_argument("--drain-timeout", type=float, default=40.0,
                        help="end a drain after this long (s), report its rate")  # fmt: skip
    parser.add_argument("--only", nargs="+", metavar="FAMILY",
                        help="families to run: threadmill dramatiq huey celery rq "
                        "django-tasks-db")  # fmt: skip
    figures = ["throughput", "latency", "idle", "overhead"]
    parser.add_argument("--figures", nargs="+", default=figures, choices=figures)
    parser.add_argument("--peers", nargs="+", metavar="NAME",
                        help="rows to run, by name, e.g. 'threadmill database'")  # fmt: skip
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite",
                        help="postgres: the database backends on PostgreSQL (a durable "
                        "server per drain), into benchmark-postgres.md")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--threadmill-rev", metavar="REV",
                        help="run threadmill as of commit REV, e.g. HEAD")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="2,000 tasks, 1 run, 50 pickups, 4 s idle window")  # fmt: skip
    parser.add_argument("--output", type=Path, default=ROOT / "docs",
                        help="where benchmark.md and .png go (default: docs/)")  # fmt: skip
    parser.add_argument("--no-chart", action="store_true", help="skip the matplotlib chart")
    parser.add_argument("--upgrade", action="store_true", help="reinstall the peers' latest")
    args = parser.parse_args(argv)
    # --quick changes the defaults; a flag given explicitly still wins.
    defaults = (
        {"tasks": 2_000, "burn_tasks": 400, "latency_tasks": 50, "idle_seconds": 4.0, "runs": 1}
        if args.quick
        else {"tasks": 20_000, "burn_tasks": 1_000, "latency_tasks": 200, "idle_seconds": 10.0,
              "runs": 3}
    )  # fmt: skip
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    logs = RESULTS / f"logs-{stamp}"
    logs.mkdir()
    ctx = Context(
        args.tasks, args.burn_tasks, args.latency_tasks, args.idle_seconds, args.drain_timeout, logs
    )
    peers = [p for p in PEERS if not args.only or p.family in args.only]
    if args.database == "postgres":
        peers = [p for p in peers if p.postgres]
    elif not args.peers:  # the PostgreSQL rows run only when asked for
        peers = [p for p in peers if not p.postgres]
    if args.peers:
        peers = [p for p in peers if p.name in args.peers]
    if not threadmill_database_exists():
        peers = [p for p in peers if not p.settings.startswith("peers.settings_threadmill_db")]
    global SNAPSHOT
    source = "working tree"
    if args.threadmill_rev:
        SNAPSHOT, commit = snapshot(args.threadmill_rev)
        source = f"commit {commit[:10]}"
    families = sorted({p.family for p in peers} - {TM})
    for family in families:
        ensure_env(family, FAMILIES[family], args.upgrade)
    report: dict = {
        "when": stamp,
        "machine": machine(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "versions": {f: versions(f, p.python()) for f, p in {p.family: p for p in peers}.items()},
        "calibrations": [calibrate(args.quick)],
        "threadmill_source": source,
        "peers": {},
    }
    random.seed(stamp)
    for peer in peers:
        log(f"{peer.name} ({peer.config})")
        report["peers"][peer.name] = {
            "family": peer.family,
            "config": peer.config,
            "runs": run_peer(peer, ctx, args.runs, set(args.figures)),
        }
    if any(p.postgres for p in peers):
        report["postgres"] = Postgres.seen
    # Again at the end: the machine's speed drifts over a long run, and a floor is the best
    # it allows.
    try:
        report["calibrations"].append(calibrate(args.quick))
    except (subprocess.SubprocessError, ValueError) as error:  # keep the run's results
        log(f"the floors could not be measured again: {error}")
    report["calibration"] = best_calibration(report["calibrations"])
    report["seconds"] = time.monotonic() - started
    report["machine"]["load_after"] = os.getloadavg()
    (RESULTS / f"{stamp}.json").write_text(json.dumps(report, indent=1))
    log(f"raw results: {RESULTS / f'{stamp}.json'} ({report['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    import report as render  # bench/report.py

    args.output.mkdir(parents=True, exist_ok=True)
    # PostgreSQL rows alone (--database postgres, or named in --peers) never replace benchmark.md.
    name = "benchmark-postgres" if peers and all(p.postgres for p in peers) else "benchmark"
    markdown = render.markdown(report)
    (args.output / f"{name}.md").write_text(markdown)
    print(markdown)
    if not args.no_chart:
        plot = ensure_env("plot", TOOLS["plot"], args.upgrade)
        subprocess.run(
            [str(plot / "bin" / "python"), str(BENCH / "chart.py"),
             str(RESULTS / f"{stamp}.json"), str(args.output / f"{name}.png")],
            check=True,
        )  # fmt: skip
    return report


if __name__ == "__main__":
    main()
