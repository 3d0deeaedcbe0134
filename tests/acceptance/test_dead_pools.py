"""Pools that vanish, and pools that live: heartbeats settle the first and never the second."""

import signal

from django.tasks import TaskResultStatus

from tests.acceptance.settings import POOL_OPTIONS
from tests.processes import kill
from tests.servers import wait_for
from tests.tasks import sleep_for


def test_a_pool_killed_whole_has_its_tasks_settled_by_a_surviving_pool_within_pool_ttl(
    start_pool, backend, finished
):
    doomed = start_pool("--processes", "1", "--threads", "2", "--queues", "low")
    doomed.booted_workers(1)
    held = [sleep_for.using(queue_name="low").enqueue(30).id for _ in range(2)]
    wait_for(
        lambda: all(backend.get_result(i).status == TaskResultStatus.RUNNING for i in held),
        timeout=15,
        what="the doomed pool to run its tasks",
    )
    survivor = start_pool("--processes", "1", "--queues", "default")
    survivor.booted_workers(1)
    for pid in doomed.workers() | {doomed.pid}:  # a power cut: arbiter and workers at once
        kill(pid, signal.SIGKILL)

    bound = POOL_OPTIONS["pool_ttl"] + 5 * POOL_OPTIONS["broker_interval"] + 5
    for task_id in held:
        result = finished(backend.get_result(task_id), timeout=bound)
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[-1].exception_class_path == (
            "threadmill.exceptions.AcknowledgementTimeout"
        )
        assert "stopped sending heartbeats" in result.errors[-1].traceback


def test_a_task_longer_than_pool_ttl_in_a_live_pool_is_not_settled(start_pool, backend, finished):
    start_pool("--processes", "1").booted_workers(1)
    long_task = sleep_for.enqueue(POOL_OPTIONS["pool_ttl"] + 2)
    result = finished(long_task, timeout=POOL_OPTIONS["pool_ttl"] + 20)
    assert result.status == TaskResultStatus.SUCCESSFUL, result.errors


def test_prefetched_tasks_waiting_past_the_lease_ttl_are_not_failed_for_waiting(
    start_pool, backend, finished, monkeypatch
):
    monkeypatch.setenv("THREADMILL_TEST_LEASE_TTL", "2")
    pool = start_pool("--processes", "1", "--threads", "1", "--prefetch", "8")
    pool.booted_workers(1)
    waiting = [sleep_for.enqueue(0.5) for _ in range(8)]  # 4 s of work in line
    for result in waiting:
        done = finished(result, timeout=30)
        assert done.status == TaskResultStatus.SUCCESSFUL, done.errors
