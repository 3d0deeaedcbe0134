"""The contract every AcknowledgeableTaskBackend keeps; runs once per kind of backend."""

import threading
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.tasks import TaskResultStatus
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone

from tests import tasks
from tests.contract_helpers import rewrite_payload, stored_status, with_options
from tests.servers import wait_for
from threadmill.backends.serialization import error_from_exception, synthetic_error
from threadmill.exceptions import InvalidReturnValue, InvalidTaskPath
from threadmill.outcomes import failed as failed_with

WORKER = "testhost:1:main"
QUEUES = ("default", "high", "low")


def succeed(task_result, value):
    object.__setattr__(task_result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(task_result, "finished_at", timezone.now())
    object.__setattr__(task_result, "_return_value", value)
    return task_result


def failed(task_result, error=None):
    return failed_with(task_result, error_from_exception(error or ValueError("boom")))


def test_enqueue_returns_a_ready_result_that_get_result_finds(backend):
    result = tasks.add.enqueue(1, 2)
    assert result.status == TaskResultStatus.READY
    assert result.enqueued_at is not None
    stored = backend.get_result(result.id)
    assert stored.status == TaskResultStatus.READY
    assert stored.args == [1, 2]
    assert stored.task.func is tasks.add.func
    assert stored.enqueued_at == result.enqueued_at


def test_enqueue_sends_task_enqueued(backend):
    received = []

    def receiver(sender, task_result, **kwargs):
        received.append(task_result.id)

    task_enqueued.connect(receiver)
    try:
        result = tasks.noop.enqueue()
    finally:
        task_enqueued.disconnect(receiver)
    assert received == [result.id]


def test_get_result_of_an_unknown_id_raises_does_not_exist(backend):
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("no-such-task")


def test_enqueue_to_an_unknown_queue_is_refused(backend):
    with pytest.raises(InvalidTask):
        tasks.noop.using(queue_name="nowhere").enqueue()


def test_acquire_leases_the_task_as_running_with_the_worker_recorded(backend):
    enqueued = tasks.add.enqueue(2, 3)
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    assert leased.id == enqueued.id
    assert leased.status == TaskResultStatus.RUNNING
    assert leased.worker_ids == [WORKER]
    assert leased.started_at is not None
    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.RUNNING
    assert stored.worker_ids == [WORKER]
    assert stored.attempts == 1


def test_acknowledged_success_is_published_with_its_return_value(backend):
    enqueued = tasks.add.enqueue(2, 3)
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    assert backend.acknowledge(succeed(leased, 5))
    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.SUCCESSFUL
    assert stored.return_value == 5
    assert stored.finished_at is not None
    enqueued.refresh()
    assert enqueued.return_value == 5


def test_acknowledged_failure_is_published_with_its_traceback(backend):
    enqueued = tasks.fail.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    assert backend.acknowledge(failed(leased, ValueError("it broke")))
    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.FAILED
    assert stored.errors[0].exception_class is ValueError
    assert "it broke" in stored.errors[0].traceback


def test_acknowledge_many_publishes_each_result_on_its_own_lease(backend):
    ids = [tasks.add.enqueue(i, i).id for i in range(3)]
    leased = backend.acquire_many(count=3, timeout=1, worker_id=WORKER)
    stale = backend.get_result(leased[2].id)
    object.__setattr__(stale, "worker_ids", ["someone:else:1"])
    results = [succeed(leased[0], 0), failed(leased[1]), succeed(stale, 4)]
    assert backend.acknowledge_many(results) == [True, True, False]
    assert backend.get_result(ids[0]).return_value == 0
    assert backend.get_result(ids[1]).status == TaskResultStatus.FAILED
    assert backend.get_result(ids[2]).status == TaskResultStatus.RUNNING


def test_acknowledge_many_answers_in_order_for_results_of_several_queues(backend):
    queues = ["low", "default", "low", "high", "default"]
    ids = [tasks.add.using(queue_name=queue).enqueue(i, 0).id for i, queue in enumerate(queues)]
    by_id = {r.id: r for r in backend.acquire_many(*QUEUES, count=5, timeout=1, worker_id=WORKER)}
    assert sorted(by_id) == sorted(ids)
    stale = by_id[ids[2]]
    object.__setattr__(stale, "worker_ids", ["someone:else:1"])
    results = [succeed(by_id[task_id], i) for i, task_id in enumerate(ids)]
    assert backend.acknowledge_many(results) == [True, True, False, True, True]
    assert [backend.get_result(task_id).return_value for task_id in ids[:2] + ids[3:]] == [
        0, 1, 3, 4,
    ]  # fmt: skip
    assert backend.get_result(ids[2]).status == TaskResultStatus.RUNNING


def test_a_non_json_return_value_is_refused_before_anything_is_written(backend):
    tasks.noop.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    with pytest.raises(InvalidReturnValue):
        backend.acknowledge(succeed(leased, object()))
    assert backend.get_result(leased.id).status == TaskResultStatus.RUNNING


def test_higher_priority_runs_first_and_equal_priority_in_enqueue_order(backend):
    low = [tasks.noop.using(priority=-5).enqueue().id for _ in range(3)]
    normal = [tasks.noop.enqueue().id for _ in range(3)]
    high = [tasks.noop.using(priority=50).enqueue().id for _ in range(3)]
    leased = [backend.acquire(timeout=1, worker_id=WORKER).id for _ in range(9)]
    assert leased == high + normal + low


def test_acquire_many_leases_several_tasks_in_one_call(backend):
    ids = [tasks.noop.enqueue().id for _ in range(5)]
    leased = backend.acquire_many(count=3, timeout=1, worker_id=WORKER)
    assert [r.id for r in leased] == ids[:3]
    assert backend.acquire_many(count=10, timeout=0, worker_id=WORKER)[0].id == ids[3]


def test_a_busy_queue_does_not_starve_another(backend):
    for _ in range(50):
        tasks.noop.enqueue()
    urgent = tasks.noop.using(queue_name="low").enqueue()
    leased = backend.acquire_many("default", "low", count=4, timeout=1, worker_id=WORKER)
    assert urgent.id in [r.id for r in leased]


def test_acquire_serves_only_the_named_queues(backend):
    tasks.noop.using(queue_name="low").enqueue()
    with pytest.raises(TimeoutError):
        backend.acquire("default", timeout=0, worker_id=WORKER)
    assert backend.acquire("low", timeout=0, worker_id=WORKER)


def test_acquire_raises_timeout_error_when_nothing_arrives(backend):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        backend.acquire(timeout=0.3, worker_id=WORKER)
    assert 0.25 < time.monotonic() - started < 2
    assert backend.acquire_many(count=5, timeout=0, worker_id=WORKER) == []


def test_an_idle_acquire_wakes_promptly_when_a_task_is_enqueued(backend):
    def enqueue_later():
        time.sleep(0.3)
        tasks.noop.enqueue()

    threading.Thread(target=enqueue_later).start()
    started = time.monotonic()
    leased = backend.acquire(timeout=5, worker_id=WORKER)
    waited = time.monotonic() - started
    assert leased is not None
    assert waited < 0.3 + 0.25, f"woke {waited - 0.3:.3f}s after the enqueue"


def test_interrupt_ends_a_blocked_acquire_of_that_worker_at_once(backend):
    threading.Timer(0.3, backend.interrupt, args=[WORKER]).start()
    started = time.monotonic()
    assert backend.acquire_many(count=1, timeout=10, worker_id=WORKER) == []
    assert time.monotonic() - started < 5
    tasks.noop.enqueue()  # and the next wait is a normal one again
    assert backend.acquire_many(count=1, timeout=5, worker_id=WORKER)


def test_a_scheduled_task_is_not_leased_before_it_is_due(backend):
    run_after = timezone.now() + timedelta(seconds=0.5)
    enqueued = tasks.noop.using(run_after=run_after).enqueue()
    assert backend.get_result(enqueued.id).status == TaskResultStatus.READY
    with pytest.raises(TimeoutError):
        backend.acquire(timeout=0, worker_id=WORKER)
    leased = backend.acquire(timeout=5, worker_id=WORKER)
    assert leased.id == enqueued.id
    assert timezone.now() >= run_after
    assert leased.task.run_after == run_after


def test_pending_work_never_expires_however_long_it_waits(backend):
    short = with_options(backend, lease_ttl=0.1, result_ttl=0.1, pool_ttl=0.1)
    run_after = timezone.now() + timedelta(seconds=1)  # beyond lease_ttl * 3 + result_ttl
    scheduled = tasks.noop.using(run_after=run_after).enqueue()
    ready = tasks.add.using(queue_name="low").enqueue(1, 1)
    running_id = tasks.add.using(queue_name="high").enqueue(2, 2).id
    short.acquire("high", timeout=1, worker_id=WORKER, pool_id="live-pool")
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:
        short.maintain("live-pool")  # the live pool keeps renewing its lease
        time.sleep(0.05)
    assert short.get_result(ready.id).status == TaskResultStatus.READY
    assert short.get_result(running_id).status == TaskResultStatus.RUNNING
    assert short.acquire("default", timeout=1, worker_id=WORKER).id == scheduled.id


def test_payloads_come_back_exactly(backend):
    args = [2**63 - 1, 2**53 + 1, -(2**64), 0.1, "ünïcödé ✓ 🎉 \u2028", [], {}, [[]], {"a": {}}]
    kwargs = {"big": 2**100, "empty_list": [], "empty_map": {}, "nested": {"x": [1, [2, {}]]}}
    enqueued = tasks.echo.enqueue(*args, **kwargs)
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    assert leased.args == args
    assert leased.kwargs == kwargs
    assert type(leased.args[5]) is list and type(leased.args[6]) is dict
    assert type(leased.kwargs["empty_map"]) is dict
    value = {"args": args, "kwargs": kwargs}
    backend.acknowledge(succeed(leased, value))
    assert backend.get_result(enqueued.id).return_value == value


def test_async_and_context_tasks_keep_their_nature(backend):
    tasks.async_add.enqueue(1, 2)
    tasks.attempt_number.enqueue()
    first = backend.acquire(timeout=1, worker_id=WORKER)
    second = backend.acquire(timeout=1, worker_id=WORKER)
    assert first.task.func is tasks.async_add.func
    assert second.task.takes_context


def test_aenqueue_and_aget_result_work(backend):
    result = async_to_sync(tasks.add.aenqueue)(4, 5)
    stored = async_to_sync(tasks.add.aget_result)(result.id)
    assert stored.id == result.id
    assert stored.args == [4, 5]


def test_release_puts_the_task_back_as_it_was(backend):
    first = tasks.noop.enqueue()
    second = tasks.noop.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    assert leased.id == first.id
    assert backend.release(leased)
    stored = backend.get_result(first.id)
    assert stored.status == TaskResultStatus.READY
    assert stored.worker_ids == []
    assert stored.started_at is None
    again = backend.acquire(timeout=1, worker_id=WORKER)
    assert again.id == first.id  # kept its place ahead of the second task
    assert again.attempts == 1
    assert second.id != again.id


def test_release_pool_gives_back_everything_a_pool_holds_and_nothing_else(backend):
    ids = [tasks.noop.enqueue().id for _ in range(3)]
    backend.maintain("mine", "theirs")
    mine = backend.acquire_many(count=2, timeout=1, worker_id=WORKER, pool_id="mine")
    theirs = backend.acquire(timeout=1, worker_id="other:1:t", pool_id="theirs")
    assert backend.release_pool("mine") == 2
    for result in mine:
        stored = backend.get_result(result.id)
        assert stored.status == TaskResultStatus.READY
        assert stored.worker_ids == []
    assert backend.get_result(theirs.id).status == TaskResultStatus.RUNNING
    again = backend.acquire_many(count=5, timeout=1, worker_id=WORKER)
    assert [r.id for r in again] == ids[:2]  # back in their places, ahead of nothing new
    assert backend.release_pool("mine") == 0


def test_a_forgotten_pool_has_its_leftover_leases_settled_at_once(backend):
    tasks.noop.enqueue()
    backend.maintain("leaving")
    leased = backend.acquire(timeout=1, worker_id=WORKER, pool_id="leaving")
    backend.forget_pool("leaving")
    assert backend.maintain()["settled"] == 1
    assert backend.get_result(leased.id).status == TaskResultStatus.FAILED


def test_retry_records_the_error_and_queues_the_same_task_again(backend):
    enqueued = tasks.fail.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    run_after = timezone.now() + timedelta(seconds=0.3)
    assert backend.retry(failed(leased, ValueError("first")), run_after)
    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.READY
    assert len(stored.errors) == 1
    with pytest.raises(TimeoutError):
        backend.acquire(timeout=0, worker_id=WORKER)
    again = backend.acquire(timeout=5, worker_id="testhost:1:other")
    assert again.id == enqueued.id
    assert again.worker_ids == [WORKER, "testhost:1:other"]
    assert backend.acknowledge(failed(again, ValueError("second")))
    final = backend.get_result(enqueued.id)
    assert final.status == TaskResultStatus.FAILED
    assert [("first" in e.traceback, "second" in e.traceback) for e in final.errors] == [
        (True, False),
        (False, True),
    ]


def test_an_expired_lease_fails_the_task_and_refuses_the_late_acknowledgement(backend):
    short = with_options(backend, lease_ttl=0.2)
    enqueued = tasks.noop.enqueue()
    leased = short.acquire(timeout=1, worker_id=WORKER)
    wait_for(lambda: short.maintain()["settled"], timeout=5, what="the lease to expire")
    stored = short.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.FAILED
    assert stored.errors[-1].exception_class_path == (
        "threadmill.exceptions.AcknowledgementTimeout"
    )
    assert not short.acknowledge(succeed(leased, "late"))
    assert short.get_result(enqueued.id).status == TaskResultStatus.FAILED


def test_an_orphaned_task_with_a_retry_policy_is_retried_not_failed(backend):
    short = with_options(backend, lease_ttl=0.2)
    enqueued = tasks.always_fails_with_retries.enqueue()
    short.acquire(timeout=1, worker_id=WORKER)
    wait_for(lambda: short.maintain()["settled"], timeout=5, what="the lease to expire")
    stored = short.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.READY
    assert stored.errors[-1].exception_class_path.endswith("AcknowledgementTimeout")
    assert short.acquire(timeout=5, worker_id=WORKER).id == enqueued.id


def test_the_tasks_of_a_pool_whose_heartbeat_stopped_are_failed(backend):
    short = with_options(backend, pool_ttl=0.3)
    enqueued = tasks.noop.enqueue()
    short.maintain("doomed-pool")
    short.acquire(timeout=1, worker_id=WORKER, pool_id="doomed-pool")
    wait_for(lambda: short.maintain("survivor")["settled"], timeout=5, what="the pool to die")
    stored = short.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.FAILED
    assert "doomed-pool" in stored.errors[-1].traceback


def test_a_repeated_acknowledgement_by_the_same_holder_is_accepted_once(backend):
    tasks.noop.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    assert backend.acknowledge(succeed(leased, 1))
    assert backend.acknowledge(succeed(leased, 1))  # a retried call after a lost reply
    other = succeed(backend.get_result(leased.id), 2)
    object.__setattr__(other, "worker_ids", ["intruder:1:x"])
    assert not backend.acknowledge(other)
    assert backend.get_result(leased.id).return_value == 1


def test_settle_fails_a_task_or_retries_it_per_its_policy(backend):
    plain = tasks.noop.enqueue()
    retried = tasks.always_fails_with_retries.enqueue()
    for _ in range(2):
        leased = backend.acquire(timeout=1, worker_id=WORKER)
        backend.settle(leased, synthetic_error(ValueError, "lost"))
    assert backend.get_result(plain.id).status == TaskResultStatus.FAILED
    assert backend.get_result(retried.id).status == TaskResultStatus.READY


def test_finished_results_expire_after_result_ttl(backend):
    short = with_options(backend, result_ttl=1)
    enqueued = tasks.noop.enqueue()
    short.acknowledge(succeed(short.acquire(timeout=1, worker_id=WORKER), None))
    assert short.get_result(enqueued.id).status == TaskResultStatus.SUCCESSFUL

    def expired() -> bool:
        short.maintain()  # the database trims here; Redis expires a finished task by itself
        try:
            short.get_result(enqueued.id)
        except TaskResultDoesNotExist:
            return True
        return False

    wait_for(expired, timeout=5, what="the result to expire")


def test_a_payload_naming_a_plain_function_runs_nothing_and_fails(backend):
    enqueued = tasks.noop.enqueue()
    payload = (
        b'{"task":"tests.tasks.plain_function","priority":0,"queue_name":"default",'
        b'"run_after":null,"backend":"default","takes_context":false,"args":[],"kwargs":{}}'
    )
    rewrite_payload(backend, enqueued.id, payload)
    assert backend.acquire_many(count=5, timeout=0, worker_id=WORKER) == []
    assert stored_status(backend, enqueued.id) == "FAILED"
    assert backend.count_pending() == {"ready": 0, "scheduled": 0, "running": 0}
    with pytest.raises(InvalidTaskPath):
        backend.get_result(enqueued.id)


def test_count_pending_counts_ready_scheduled_and_running(backend):
    tasks.noop.enqueue()
    tasks.noop.enqueue()
    tasks.noop.using(run_after=timezone.now() + timedelta(hours=1)).enqueue()
    backend.acquire(timeout=1, worker_id=WORKER)
    assert backend.count_pending() == {"ready": 1, "scheduled": 1, "running": 1}
    assert backend.count_pending("low") == {"ready": 0, "scheduled": 0, "running": 0}
