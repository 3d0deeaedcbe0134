"""The real pool (`manage.py threadmill`) on the database backend, SQLite and PostgreSQL."""

import json
import signal
import subprocess
import sys
import tempfile
from datetime import timedelta

import pytest
from django.tasks import TaskResultStatus, task_backends
from django.utils import timezone

from tests import pool_tasks, tasks
from tests.conftest import database_tasks_setting_for
from tests.servers import environment, wait_for

# The pool, with the TASKS setting of the test (the workers are forked: they inherit it).
POOL = """
import json, os, sys
import django
from django.conf import settings

django.setup()
settings.TASKS = json.loads(os.environ["THREADMILL_TEST_TASKS"])
from django.core.management import call_command

call_command("threadmill", *sys.argv[1:])
"""


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, settings):
    settings.TASKS = request.getfixturevalue(f"{request.param}_tasks_setting")
    return task_backends["default"]


def pool_command(backend, *args: str) -> tuple[list[str], dict[str, str]]:
    options = {"broker_interval": 0.2, "pool_ttl": 5.0}
    env = environment(
        DJANGO_SETTINGS_MODULE="tests.settings",
        THREADMILL_TEST_TASKS=json.dumps(database_tasks_setting_for(backend.database, **options)),
    )
    return [sys.executable, "-c", POOL, *args], env


def run_pool(backend, *args: str) -> subprocess.CompletedProcess:
    command, env = pool_command(backend, *args)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def run_pool_until(backend, done, *args: str) -> tuple[int, str]:
    """Run the pool until `done()` holds, then stop it as an operator would (SIGTERM).

    (--exit-empty would not do: a task waiting for its retry is not pending work to it.)
    """
    command, env = pool_command(backend, *args)
    with tempfile.TemporaryFile("w+") as log:
        pool = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(done, timeout=60, interval=0.1, what="the tasks to finish")
            pool.send_signal(signal.SIGTERM)
            returncode = pool.wait(30)
        finally:
            if pool.poll() is None:
                pool.kill()
                pool.wait()
        log.seek(0)
        return returncode, log.read()


def test_a_pool_drains_a_mixed_workload_and_every_task_ends_as_it_should(backend):
    sums = [tasks.add.enqueue(i, i) for i in range(40)]
    asynchronous = tasks.async_add.enqueue(2, 3)
    failing = tasks.fail.enqueue("on purpose")
    retried = tasks.always_fails_with_retries.enqueue()
    scheduled = tasks.noop.using(run_after=timezone.now() + timedelta(seconds=1)).enqueue()
    urgent = tasks.urgent.enqueue()

    everything = [*sums, asynchronous, failing, retried, scheduled, urgent]

    def all_finished() -> bool:
        return all(backend.get_result(result.id).is_finished for result in everything)

    returncode, log = run_pool_until(backend, all_finished, "--processes", "2", "--threads", "2")

    assert returncode == 0, log
    assert "locked" not in log
    for i, result in enumerate(sums):
        result.refresh()
        assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, 2 * i)
    asynchronous.refresh()
    assert asynchronous.return_value == 5
    urgent.refresh()
    assert urgent.return_value == "urgent"
    failing.refresh()
    assert failing.status == TaskResultStatus.FAILED
    assert "on purpose" in failing.errors[-1].traceback
    retried.refresh()
    assert retried.status == TaskResultStatus.FAILED
    assert len(retried.errors) == 3  # the first attempt and its two retries
    assert len(retried.worker_ids) == 3
    scheduled.refresh()
    assert scheduled.status == TaskResultStatus.SUCCESSFUL
    assert scheduled.started_at >= scheduled.task.run_after
    assert backend.count_pending() == {"ready": 0, "scheduled": 0, "running": 0}


def test_tasks_that_crash_or_hang_their_worker_fail_alone_and_the_rest_run(backend):
    crashes = [pool_tasks.segfault.enqueue(), pool_tasks.hard_exit.enqueue(7)]
    hung = pool_tasks.spin_forever.enqueue()
    sums = [pool_tasks.add.enqueue(i, 1) for i in range(10)]

    pool = run_pool(backend, "--processes", "2", "--exit-empty")

    assert pool.returncode == 0, pool.stdout + pool.stderr
    for result in crashes:
        result.refresh()
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[-1].exception_class_path == "threadmill.exceptions.WorkerLost"
    hung.refresh()
    assert hung.status == TaskResultStatus.FAILED
    assert hung.errors[-1].exception_class_path == "threadmill.exceptions.TaskTimeout"
    for i, result in enumerate(sums):
        result.refresh()
        assert (result.status, result.return_value) == (TaskResultStatus.SUCCESSFUL, i + 1)
