"""The chaos run: many tasks through pools that are killed, stopped and cut off from Redis.

Enqueues N tasks that each record their executions in a file, runs two pools on a Redis that
persists every write (AOF, appendfsync always), and meanwhile SIGKILLs a random worker process
every `worker_kill_interval` seconds, SIGKILLs and restarts Redis, SIGTERMs and restarts a whole
pool, and SIGKILLs a whole pool (arbiter and workers at once, as a power cut would). Then it
waits for quiescence and counts: final results, lost tasks (no result at all), stuck tasks
(still READY or RUNNING), and duplicate executions with the recorded failure that explains each.
"""

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist

from tests.processes import children, kill
from tests.servers import RedisServer, environment

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Plan:
    tasks: int = 20_000
    pools: int = 2
    processes: int = 2
    threads: int = 4
    worker_kill_interval: float = 1.0
    redis_kills: int = 3
    pool_restarts: int = 2
    pool_deaths: int = 1
    event_interval: float = 3.0  # seconds between the big events
    quiescence_timeout: float = 180.0


@dataclass
class Report:
    enqueued: int = 0
    statuses: Counter = field(default_factory=Counter)
    failure_reasons: Counter = field(default_factory=Counter)
    lost: int = 0
    stuck: int = 0
    executions: int = 0
    duplicate_executions: int = 0
    duplicates_explained: Counter = field(default_factory=Counter)
    duplicates_unexplained: int = 0
    succeeded_without_execution: int = 0
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        rows = [
            ("enqueued", self.enqueued),
            ("final SUCCESSFUL", self.statuses["SUCCESSFUL"]),
            ("final FAILED", self.statuses["FAILED"]),
            *((f"  FAILED with {reason}", n) for reason, n in self.failure_reasons.items()),
            ("lost (no result)", self.lost),
            ("stuck (READY/RUNNING)", self.stuck),
            ("executions", self.executions),
            ("duplicate executions", self.duplicate_executions),
            *(
                (f"  after a recorded {reason}", n)
                for reason, n in self.duplicates_explained.most_common()
            ),
            ("  unexplained", self.duplicates_unexplained),
            ("SUCCESSFUL but never executed", self.succeeded_without_execution),
        ]
        lines = ["| figure | count |", "|---|---:|"]
        lines += [f"| {name} | {value:,} |" for name, value in rows]
        return "\n".join(lines)


class ChaosPool:
    """One `manage.py threadmill` under test, restartable."""

    def __init__(self, number: int, args: list[str], env: dict[str, str], workdir: Path) -> None:
        self.number, self.args, self.env, self.workdir = number, args, env, workdir
        self.generation = 0
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.generation += 1
        log = self.workdir / f"pool-{self.number}-{self.generation}.log"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "django", "threadmill", *self.args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def workers(self) -> set[int]:
        return children(self.process.pid) if self.process else set()

    def terminate(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.die()
            return -9

    def die(self) -> None:
        """SIGKILL the arbiter and its workers together, as a power cut would."""
        doomed = self.workers()
        kill(self.process.pid)
        for pid in doomed:
            kill(pid)
        self.process.wait()


def pool_environment(redis_url: str, key_prefix: str, workdir: Path) -> dict[str, str]:
    """The environment of a pool under test; its tasks record executions in workdir."""
    return environment(
        DJANGO_SETTINGS_MODULE="tests.acceptance.settings",
        THREADMILL_TEST_REDIS_URL=redis_url,
        THREADMILL_TEST_KEY_PREFIX=key_prefix,
        THREADMILL_TEST_DB_DIR=str(workdir),
        THREADMILL_CHAOS_LOG=str(workdir / "executions.log"),
        PYTHONUNBUFFERED="1",
    )


def run(
    plan: Plan,
    redis: RedisServer,
    key_prefix: str,
    workdir: Path,
    say: Callable[[str], None] = print,
) -> Report:
    """Run the chaos plan against `redis`; TASKS must point this process at it already."""
    from tests.chaos_tasks import recorded

    backend = task_backends["default"]
    report = Report()
    log_path = workdir / "executions.log"
    env = pool_environment(redis.url, key_prefix, workdir)
    started = time.monotonic()
    say(f"enqueueing {plan.tasks:,} tasks")
    ids = [recorded.enqueue(number).id for number in range(plan.tasks)]
    report.enqueued = len(ids)

    args = ["--processes", str(plan.processes), "--threads", str(plan.threads)]
    args += ["--graceful-timeout", "10"]
    pools = [ChaosPool(n, args, env, workdir) for n in range(plan.pools)]

    events = (
        ["redis"] * plan.redis_kills + ["restart"] * plan.pool_restarts + ["die"] * plan.pool_deaths
    )
    rng = random.Random(20261127)
    rng.shuffle(events)
    next_event = time.monotonic() + plan.event_interval
    next_worker_kill = time.monotonic() + plan.worker_kill_interval

    def pending() -> int:
        try:
            return sum(backend.count_pending().values())
        except Exception:  # Redis is down this moment
            return -1

    while events or (waiting := pending()) != 0:
        now = time.monotonic()
        if now - started > plan.quiescence_timeout:
            say("gave up waiting for quiescence")
            break
        # Workers die all along, until the last task is done (or Redis is down this moment).
        if now >= next_worker_kill and (events or waiting > 0):
            victims = [pid for pool in pools for pid in pool.workers()]
            if victims:
                kill(rng.choice(victims))
                report.events.append("worker SIGKILL")
            next_worker_kill = now + plan.worker_kill_interval
        if events and now >= next_event:
            event = events.pop()
            waiting = pending()
            if event == "redis":
                redis.kill()
                time.sleep(0.5)
                redis.start()
                report.events.append(f"Redis SIGKILL + restart ({waiting} pending)")
            elif event == "restart":
                pool = rng.choice(pools)
                code = pool.terminate()
                pool.start()
                report.events.append(f"pool SIGTERM (exit {code}) + restart ({waiting} pending)")
            else:
                pool = rng.choice(pools)
                pool.die()
                time.sleep(1.0)
                pool.start()
                report.events.append(f"whole pool SIGKILL + new pool ({waiting} pending)")
            say(report.events[-1])
            next_event = time.monotonic() + plan.event_interval
        time.sleep(0.05)

    for pool in pools:
        pool.terminate()
    report.seconds = time.monotonic() - started
    _count(report, backend, ids, log_path)
    return report


def _count(report: Report, backend, ids: list[str], log_path: Path) -> None:
    executions = Counter()
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            executions[line.split()[0]] += 1
    report.executions = sum(executions.values())
    for task_id in ids:
        try:
            result = backend.get_result(task_id)
        except TaskResultDoesNotExist:
            report.lost += 1
            continue
        if not result.is_finished:
            report.stuck += 1
            continue
        report.statuses[result.status.value] += 1
        if result.status == TaskResultStatus.FAILED:
            report.failure_reasons[result.errors[-1].exception_class_path.rsplit(".", 1)[-1]] += 1
        runs = executions[task_id]
        if result.status == TaskResultStatus.SUCCESSFUL and runs == 0:
            report.succeeded_without_execution += 1
        if runs > 1:
            report.duplicate_executions += runs - 1
            # Each further run must follow a failed attempt the task recorded.
            reasons = [e.exception_class_path.rsplit(".", 1)[-1] for e in result.errors]
            if result.status == TaskResultStatus.FAILED:
                reasons = reasons[:-1]
            for reason in reasons[: runs - 1]:
                report.duplicates_explained[reason] += 1
            report.duplicates_unexplained += max(0, runs - 1 - len(reasons))
