"""Start `manage.py threadmill` as a real subprocess against a real Redis, and watch it."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.tasks import TaskResult, task_backends

from tests.acceptance.settings import POOL_OPTIONS
from tests.conftest import redis_tasks_setting_for
from tests.processes import children, kill
from tests.servers import environment, wait_for

ROOT = Path(__file__).resolve().parents[2]


class Pool:
    """One `python -m django threadmill` process, its log, and its worker processes."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "django", "threadmill", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        """Live worker processes: the arbiter's children that are not zombies."""
        return children(self.pid)

    def booted_workers(self, count: int, timeout: float = 15.0) -> set[int]:
        """Wait until exactly `count` worker processes run and have all booted."""

        def booted() -> set[int] | None:
            pids = self.workers()
            log = self.log()
            if len(pids) == count and all(f"Worker process {p} booted" in log for p in pids):
                return pids
            return None

        return wait_for(booted, timeout=timeout, what=f"{count} booted worker processes")

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(f"the pool did not exit:\n{self.log()}") from error

    def kill(self) -> None:
        """Leave nothing behind: the arbiter and every worker process."""
        if self.process.poll() is None:
            for pid in self.workers():
                kill(pid)
            self.process.kill()
            self.process.wait()


@pytest.fixture
def tasks_setting(redis_server, key_prefix, settings):
    """Point this process at the Redis and key prefix the pools use."""
    settings.TASKS = redis_tasks_setting_for(redis_server.url, key_prefix, **POOL_OPTIONS)
    return settings.TASKS


@pytest.fixture
def backend(tasks_setting):
    return task_backends["default"]


@pytest.fixture
def start_pool(redis_server, key_prefix, tasks_setting, tmp_path) -> Iterator:
    """Start pools with `start_pool("--processes", "2", ...)`; all are killed at the end."""
    pools: list[Pool] = []

    def start(*args: str, settings_module: str = "tests.acceptance.settings") -> Pool:
        env = environment(
            DJANGO_SETTINGS_MODULE=settings_module,
            THREADMILL_TEST_REDIS_URL=redis_server.url,
            THREADMILL_TEST_KEY_PREFIX=key_prefix,
            THREADMILL_TEST_DB_DIR=str(tmp_path),
            PYTHONUNBUFFERED="1",
        )
        pool = Pool(list(args), env, tmp_path / f"pool-{len(pools)}.log")
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.kill()


@pytest.fixture
def finished(backend):
    """Wait for a task result to finish; return it."""

    def wait(result: TaskResult, timeout: float = 15.0) -> TaskResult:
        return wait_for(
            lambda: (r := backend.get_result(result.id)).is_finished and r,
            timeout=timeout,
            what=f"task {result.id} ({result.task.name}) to finish",
        )

    return wait
