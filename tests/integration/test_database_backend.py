"""What only the database backend promises: concurrent leasing, its idle wait, its tables."""

import gc
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta

import pytest
from django.core import checks
from django.db import connections, transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests import tasks
from tests.conftest import database_tasks_setting_for
from tests.contract_helpers import with_options
from tests.servers import environment, wait_for
from threadmill.backends.database import DatabaseTaskBackend
from threadmill.models import PoolHeartbeat, TaskRecord

WORKER = "testhost:1:main"


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, settings) -> DatabaseTaskBackend:
    settings.TASKS = request.getfixturevalue(f"{request.param}_tasks_setting")
    return task_backends["default"]


def succeed(task_result, value=None):
    object.__setattr__(task_result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(task_result, "finished_at", timezone.now())
    object.__setattr__(task_result, "_return_value", value)
    return task_result


# A worker process of its own: leases in batches, acknowledges each task, prints the ids it
# ran, and stops once nothing came for a while.
WORKER_PROCESS = """
import json, os, sys
import django
from django.conf import settings

django.setup()
settings.TASKS = json.loads(os.environ["THREADMILL_TEST_TASKS"])
from django.tasks import TaskResultStatus, task_backends
from django.utils import timezone

backend = task_backends["default"]
worker_id = f"process:{os.getpid()}"
ran = []
while True:
    leased = backend.acquire_many(count=int(sys.argv[1]), timeout=1.0, worker_id=worker_id)
    if not leased:
        break
    for result in leased:
        object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(result, "finished_at", timezone.now())
        assert backend.acknowledge(result), result.id
        ran.append(result.id)
print(json.dumps(ran))
"""


def start_worker_processes(backend, processes: int, batch: int) -> list[subprocess.Popen]:
    env = environment(
        DJANGO_SETTINGS_MODULE="tests.settings",
        THREADMILL_TEST_TASKS=json.dumps(database_tasks_setting_for(backend.database)),
    )
    return [
        subprocess.Popen(
            [sys.executable, "-c", WORKER_PROCESS, str(batch)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]


def test_several_worker_processes_run_every_task_exactly_once_without_lock_errors(backend):
    enqueued = [tasks.noop.enqueue().id for _ in range(300)]
    workers = start_worker_processes(backend, processes=4, batch=3)
    # Enqueue while they lease, so writers really do contend for the database.
    enqueued += [tasks.noop.enqueue().id for _ in range(100)]
    ran, errors = [], []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        ran.extend(json.loads(out))
        errors.append(err)
    assert sorted(ran) == sorted(enqueued)  # every task, none twice
    assert not any("locked" in err for err in errors), errors
    assert backend.count_pending() == {"ready": 0, "scheduled": 0, "running": 0}


def test_threads_leasing_at_once_never_get_the_same_task(backend):
    enqueued = {tasks.noop.enqueue().id for _ in range(200)}
    leased: list[str] = []
    lock = threading.Lock()

    def lease(number: int) -> None:
        own = task_backends["default"]  # each thread has its backend and its connection
        try:
            while batch := own.acquire_many(count=4, timeout=0, worker_id=f"thread:{number}"):
                with lock:
                    leased.extend(result.id for result in batch)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=lease, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(leased) == len(enqueued)
    assert set(leased) == enqueued


def test_an_idle_acquire_on_postgresql_sleeps_on_listen_without_querying(postgres_tasks_setting):
    backend = DatabaseTaskBackend("default", postgres_tasks_setting["default"])
    connection = connections[backend.worker_database]
    with CaptureQueriesContext(connection) as queries, pytest.raises(TimeoutError):
        backend.acquire(timeout=1.0, worker_id=WORKER)
    # One look before the wait and one after it, each a single read; LISTEN in between.
    assert len(queries) <= 2, [q["sql"] for q in queries]


def test_an_idle_acquire_on_postgresql_wakes_within_milliseconds(postgres_tasks_setting, settings):
    settings.TASKS = postgres_tasks_setting
    waiting = DatabaseTaskBackend("default", postgres_tasks_setting["default"])
    woke: list[float] = []

    def acquire() -> None:
        try:
            waiting.acquire(timeout=10, worker_id=WORKER)
            woke.append(time.monotonic())
        finally:
            connections.close_all()

    thread = threading.Thread(target=acquire)
    thread.start()
    wait_for(_listening, timeout=5, what="the acquire to LISTEN")
    enqueued_at = time.monotonic()
    tasks.noop.enqueue()
    thread.join(10)
    assert woke, "the acquire never woke"
    assert woke[0] - enqueued_at < 0.1


def test_acquires_from_threads_in_turn_share_one_listen_connection(postgres_tasks_setting):
    # A pool's threads take turns at leasing: a LISTEN connection for each would multiply a
    # worker process's connections by its threads. The threads stay alive until the count, so
    # a connection kept per thread would still be open then.
    backend = DatabaseTaskBackend("default", postgres_tasks_setting["default"])
    gc.collect()  # listeners of backends earlier tests dropped close now, not during the count
    before = _listeners()
    timed_out: list[bool] = []
    counted = threading.Event()

    def acquire() -> None:
        try:
            backend.acquire(timeout=0.2, worker_id=WORKER)
        except TimeoutError:
            timed_out.append(True)
        finally:
            counted.wait(10)
            connections.close_all()

    threads = [threading.Thread(target=acquire) for _ in range(4)]
    for started, thread in enumerate(threads, 1):
        thread.start()
        wait_for(lambda n=started: len(timed_out) == n, what="the acquire to end")
    try:
        assert _listeners() - before == 1
    finally:
        counted.set()
        for thread in threads:
            thread.join(10)


def _listening() -> bool:
    return _listeners(state="idle") > 0


def _listeners(state: str | None = None) -> int:
    query = "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN threadmill'"
    with connections["postgres"].cursor() as cursor:
        if state is None:
            cursor.execute(query)
        else:
            cursor.execute(query + " AND state = %s", [state])
        return cursor.fetchone()[0]


def test_an_idle_acquire_on_sqlite_polls_without_taking_the_write_lock(sqlite_tasks_setting):
    backend = DatabaseTaskBackend("default", sqlite_tasks_setting["default"])
    connection = connections[backend.worker_database]
    with CaptureQueriesContext(connection) as queries, pytest.raises(TimeoutError):
        backend.acquire(timeout=1.0, worker_id=WORKER)
    statements = [q["sql"] for q in queries]
    assert not [sql for sql in statements if sql.startswith("BEGIN")], statements
    polls = [sql for sql in statements if sql == "PRAGMA data_version"]
    assert 5 < len(polls) < 60, f"{len(polls)} polls in a second: backing off is broken"


def test_sqlite_runs_in_wal_mode(sqlite_tasks_setting, settings):
    settings.TASKS = sqlite_tasks_setting
    backend = task_backends["default"]
    tasks.noop.enqueue()
    with connections[backend.database].cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_an_enqueue_inside_a_transaction_commits_or_rolls_back_with_it(backend):
    with transaction.atomic(using=backend.database):
        kept = tasks.noop.enqueue()
    with pytest.raises(RuntimeError), transaction.atomic(using=backend.database):
        dropped = tasks.noop.enqueue()
        raise RuntimeError("the view failed")
    assert backend.get_result(kept.id).status == TaskResultStatus.READY
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(dropped.id)


def test_concurrent_maintainers_settle_each_orphan_exactly_once(backend):
    short = with_options(backend, lease_ttl=0.1, batch_size=3)
    ids = [tasks.noop.enqueue().id for _ in range(10)]
    assert len(short.acquire_many(count=10, timeout=1, worker_id=WORKER)) == 10
    expiry = max(
        TaskRecord.objects.using(backend.database).values_list("lease_expires_at", flat=True)
    )
    wait_for(lambda: timezone.now() > expiry, timeout=5, what="the leases to expire")
    settled: list[int] = []

    def maintain() -> None:
        own = with_options(backend, lease_ttl=0.1, batch_size=3)
        try:
            settled.append(own.maintain()["settled"])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=maintain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(settled) == 10
    for task_id in ids:
        stored = backend.get_result(task_id)
        assert stored.status == TaskResultStatus.FAILED
        assert [e.exception_class_path for e in stored.errors] == [
            "threadmill.exceptions.AcknowledgementTimeout"
        ]


def test_expired_results_are_trimmed_in_batches_and_nothing_else_is(backend):
    short = with_options(backend, result_ttl=0.2, batch_size=10)
    finished = [tasks.noop.enqueue().id for _ in range(25)]
    for leased in short.acquire_many(count=25, timeout=1, worker_id=WORKER):
        assert short.acknowledge(succeed(leased))
    pending = tasks.noop.enqueue().id
    scheduled = tasks.noop.using(run_after=timezone.now() + timedelta(hours=1)).enqueue().id
    last = max(
        TaskRecord.objects.using(backend.database)
        .filter(finished_at__isnull=False)
        .values_list("finished_at", flat=True)
    )
    wait_for(lambda: timezone.now() > last + timedelta(seconds=0.2), what="results to expire")
    assert short.maintain()["trimmed"] == 25  # in three batches
    assert set(TaskRecord.objects.using(backend.database).values_list("result_id", flat=True)) == {
        pending,
        scheduled,
    }
    assert not set(finished) & set(
        TaskRecord.objects.using(backend.database).values_list("result_id", flat=True)
    )


def test_a_database_backend_on_a_known_database_passes_the_system_checks(backend):
    assert list(backend.check()) == []


def test_a_database_option_naming_no_database_is_a_system_check_error(settings):
    settings.TASKS = database_tasks_setting_for("nowhere")
    errors = task_backends["default"].check()
    assert [error.id for error in errors] == ["threadmill.E010"]
    assert all(error.level == checks.ERROR for error in errors)


def test_an_in_memory_sqlite_database_is_a_system_check_error(settings, monkeypatch):
    memory = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    monkeypatch.setitem(settings.DATABASES, "memory", memory)
    monkeypatch.setitem(
        connections.settings,
        "memory",
        connections.configure_settings({"default": {}, "memory": memory})["memory"],
    )
    settings.TASKS = database_tasks_setting_for("memory")
    assert [error.id for error in task_backends["default"].check()] == ["threadmill.E012"]


def test_a_write_lock_held_past_the_busy_timeout_never_reaches_the_caller(sqlite_tasks_setting):
    backend = DatabaseTaskBackend("default", sqlite_tasks_setting["default"])
    connection = connections[backend.database]
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout = 50")  # this connection gives up waiting at once
    holder = sqlite3.connect(
        connection.settings_dict["NAME"], isolation_level=None, check_same_thread=False
    )
    holder.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    release = threading.Timer(0.5, holder.commit)
    release.start()
    started = time.monotonic()
    result = backend.enqueue(tasks.noop, (), {})
    assert time.monotonic() - started >= 0.4  # it waited for the lock instead of failing
    assert backend.get_result(result.id).status == TaskResultStatus.READY
    release.join()
    holder.close()


def test_a_forgotten_pool_has_its_leases_settled_by_the_next_pass_and_is_dropped(backend):
    enqueued = tasks.noop.enqueue()
    backend.maintain("stopping-pool", "live-pool")
    backend.acquire(timeout=1, worker_id=WORKER, pool_id="stopping-pool")
    backend.forget_pool("stopping-pool")
    assert backend.maintain("live-pool")["settled"] == 1
    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.FAILED
    assert "stopping-pool" in stored.errors[-1].traceback
    heartbeats = PoolHeartbeat.objects.using(backend.database)
    assert list(heartbeats.values_list("pool_id", flat=True)) == ["live-pool"]


def test_release_pool_gives_back_every_task_the_pool_held_as_it_was(backend):
    held = [tasks.noop.enqueue().id for _ in range(3)]
    other = tasks.noop.enqueue().id
    backend.maintain("crashed-pool", "other-pool")
    assert (
        len(backend.acquire_many(count=3, timeout=1, worker_id=WORKER, pool_id="crashed-pool")) == 3
    )
    assert backend.acquire(timeout=1, worker_id="other:1:x", pool_id="other-pool").id == other
    assert backend.release_pool("crashed-pool") == 3
    for task_id in held:
        stored = backend.get_result(task_id)
        assert stored.status == TaskResultStatus.READY
        assert (stored.worker_ids, stored.started_at, stored.last_attempted_at) == ([], None, None)
    assert backend.get_result(other).status == TaskResultStatus.RUNNING
    assert not PoolHeartbeat.objects.using(backend.database).filter(pool_id="crashed-pool")
    assert backend.acquire(timeout=1, worker_id=WORKER).id == held[0]  # kept its place


def test_a_busy_worker_leases_and_acknowledges_a_batch_in_one_statement_each(backend):
    for _ in range(20):
        tasks.noop.enqueue()
    tasks.noop.using(queue_name="low").enqueue()
    connection = connections[backend.worker_database]
    backend.acquire_many(count=1, timeout=1, worker_id=WORKER)  # the batches come full now

    def statements(queries) -> list[str]:
        # SQLite's idle wait reads the file's change counter (PRAGMA data_version), no table.
        return [q["sql"].split()[0] for q in queries if not q["sql"].startswith("PRAGMA")]

    with CaptureQueriesContext(connection) as queries:
        leased = backend.acquire_many(count=16, timeout=1, worker_id=WORKER)
    assert len(leased) == 16
    assert "low" in {result.task.queue_name for result in leased}
    assert statements(queries) == ["UPDATE"], [q["sql"] for q in queries]
    with CaptureQueriesContext(connection) as queries:
        acknowledged = backend.acknowledge_many([succeed(result, {"n": 1}) for result in leased])
    assert acknowledged == [True] * 16
    assert statements(queries) == ["UPDATE"], [q["sql"] for q in queries]
    for result in leased:
        stored = backend.get_result(result.id)
        assert (stored.status, stored.return_value) == (TaskResultStatus.SUCCESSFUL, {"n": 1})


def test_a_queue_short_of_due_tasks_leaves_its_share_of_a_batch_to_the_others(backend):
    busy = [tasks.noop.enqueue().id for _ in range(10)]
    short = [tasks.noop.using(queue_name="low").enqueue().id for _ in range(2)]
    leased = [r.id for r in backend.acquire_many("default", "low", count=8, worker_id=WORKER)]
    assert sorted(leased) == sorted(short + busy[:6])


def test_leasing_on_sqlite_reads_the_batch_from_the_leasing_index_without_sorting_the_queue(
    sqlite_tasks_setting,
):
    from threadmill.backends.database import queries

    backend = DatabaseTaskBackend("default", sqlite_tasks_setting["default"])
    connection = connections[backend.worker_database]
    sql = queries.lease("sqlite", 1).replace("%s", "?")
    params = [WORKER, "[]", "]", "t", "t", None, "t", "default", "default", "t", 16]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = [row[-1] for row in cursor.fetchall()]
    assert any("USING INDEX threadmill_task_ready" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
