"""The arbiter publishes what a dead worker process held unpublished, as the worker would have."""

from datetime import timedelta

from django.tasks import TaskResultStatus

from tests import tasks
from threadmill.backends.serialization import error_from_exception
from threadmill.outcomes import failed, succeeded
from threadmill.pool import held_outcomes

WORKER = "testhost:1:fetcher"


def test_a_held_success_is_published_with_its_return_value(backend):
    enqueued = tasks.add.enqueue(2, 3)
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    held = held_outcomes.encode(succeeded(leased, {"sum": 5, "text": "é"}), None)

    status = held_outcomes.publish(backend, backend.get_result(enqueued.id), held)

    assert status == "SUCCESSFUL"
    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.SUCCESSFUL
    assert stored.return_value == {"sum": 5, "text": "é"}
    assert stored.worker_ids == [WORKER]


def test_a_held_failure_is_published_with_its_error(backend):
    enqueued = tasks.fail.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    held = held_outcomes.encode(failed(leased, error_from_exception(ValueError("it broke"))), None)

    assert held_outcomes.publish(backend, backend.get_result(enqueued.id), held) == "FAILED"

    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.FAILED
    assert stored.errors[-1].exception_class is ValueError
    assert "it broke" in stored.errors[-1].traceback


def test_a_held_failure_its_policy_retries_is_queued_again_after_its_delay(backend):
    enqueued = tasks.fail.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    outcome = failed(leased, error_from_exception(ValueError("first")))
    held = held_outcomes.encode(outcome, timedelta(seconds=60))

    status = held_outcomes.publish(backend, backend.get_result(enqueued.id), held)

    assert status == "FAILED, retry in 60s"
    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.READY
    assert "first" in stored.errors[-1].traceback
    assert backend.acquire_many(count=1, timeout=0.2, worker_id=WORKER) == []  # not due yet
